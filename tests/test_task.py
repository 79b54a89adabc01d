"""Task[In, Out]: type arguments become pydantic adapters; no process needed."""

from __future__ import annotations

from typing import Any, Generic, TypeVar

import pydantic
import pytest

from tarnish_py import Task
from tarnish_py._task import adapters

A = TypeVar("A")
B = TypeVar("B")
C = TypeVar("C")


class Double(Task[int, int]):
    def run(self, x: int) -> int:
        return 2 * x


class Base(Task[A, B]):
    """A generic intermediate: concrete subclasses fill in A and B."""

    def describe(self) -> str:
        return type(self).__name__


class Impl(Base[int, str]):
    def run(self, x: int) -> str:
        return str(x)


class Swapped(Task[B, A]):
    """Type variables in another order than they are declared."""


class SwappedImpl(Swapped[int, bytes]):
    pass


class HalfDone(Task[list[A], A]):
    """A type variable nested inside a type argument."""


class Finished(HalfDone[float]):
    pass


class NestedOnly(Task[list[A], int]):
    """Generic only through a nested type variable."""


class Mid(Base[int, C]):
    pass


class Leaf(Mid[bytes]):
    pass


class Child(Double):
    """A subclass of a concrete task inherits its types."""


class GrandChild(Child):
    pass


class Mixin:
    def helper(self) -> int:
        return 1


class WithMixin(Mixin, Task[str, int]):
    pass


class ExtraGeneric(Task[int, str], Generic[A]):
    """A concrete task that is also generic in something unrelated."""


class Forward(Task["LaterModel", "list[LaterModel]"]):
    pass


class LaterModel(pydantic.BaseModel):
    x: int


@pytest.mark.parametrize(
    ("cls", "good_in", "good_out", "bad_in"),
    [
        (Double, "21", 42, "x"),
        (Impl, 7, "7", "seven"),
        (SwappedImpl, 1, b"b", "one"),
        (Leaf, 3, b"leaf", [3]),
        (Child, 1, 2, None),
        (GrandChild, 1, 2, None),
        (WithMixin, "s", 3, 3),
        (ExtraGeneric, 5, "s", "five"),
    ],
    ids=lambda v: v.__name__ if isinstance(v, type) else None,
)
def test_concrete_tasks_get_adapters_from_their_type_arguments(
    cls: type[Task[Any, Any]], good_in: Any, good_out: Any, bad_in: Any
) -> None:
    inp, out = adapters(cls)
    assert isinstance(inp, pydantic.TypeAdapter) and isinstance(out, pydantic.TypeAdapter)
    inp.validate_python(good_in)
    out.validate_python(good_out)
    with pytest.raises(pydantic.ValidationError):
        inp.validate_python(bad_in)


def test_adapters_validate_into_the_declared_types() -> None:
    assert adapters(Double)[0].validate_python("21") == 21
    assert adapters(SwappedImpl)[1].validate_python(b"x") == b"x"
    with pytest.raises(pydantic.ValidationError):
        adapters(SwappedImpl)[1].validate_python(1)  # Out is bytes, not the In int
    with pytest.raises(pydantic.ValidationError):
        adapters(Impl)[1].validate_python(5)  # Out is str: pydantic does not make one from an int


def test_nested_type_variables_are_filled_in() -> None:
    inp, out = adapters(Finished)
    assert out.validate_python("2.5") == 2.5
    assert inp.validate_python([1, "2.5"]) == [1.0, 2.5]
    with pytest.raises(pydantic.ValidationError):
        inp.validate_python(["x"])


def test_a_nested_type_variable_makes_a_task_generic() -> None:
    with pytest.raises(TypeError, match="generic"):
        adapters(NestedOnly)


def test_adapters_are_built_once_per_class() -> None:
    assert adapters(Double) is adapters(Double)
    assert adapters(Child)[0] is adapters(Child)[0]


def test_subclass_of_a_concrete_task_keeps_its_methods() -> None:
    assert Child().run(4) == 8
    assert Impl().describe() == "Impl"
    assert WithMixin().helper() == 1


@pytest.mark.parametrize("cls", [Base, Swapped, HalfDone, Mid], ids=lambda c: c.__name__)
def test_generic_intermediate_tasks_have_no_adapters(cls: type[Task[Any, Any]]) -> None:
    with pytest.raises(TypeError, match=r"generic.*Task\[int, str\]"):
        adapters(cls)


def test_forward_references_are_resolved_on_first_use() -> None:
    inp, out = adapters(Forward)
    assert inp.validate_python({"x": "1"}) == LaterModel(x=1)
    assert out.validate_python([{"x": 2}]) == [LaterModel(x=2)]


def test_missing_type_arguments_are_a_type_error_showing_the_right_form() -> None:
    with pytest.raises(TypeError) as info:

        class Bare(Task):  # type: ignore[type-arg]
            pass

    message = str(info.value)
    assert "Bare" in message
    assert "Task[int, str]" in message


def test_bare_subclass_of_a_generic_task_is_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"Task\[int, str\]"):

        class Unfinished(Base):  # type: ignore[type-arg]
            pass


def test_a_task_is_instantiated_with_no_arguments_and_default_hooks_do_nothing() -> None:
    task = Impl()
    task.setup()
    assert task.run(3) == "3"
    task.close()


def test_the_default_run_raises_not_implemented() -> None:
    class NoRun(Task[int, int]):
        pass

    with pytest.raises(NotImplementedError, match="NoRun"):
        NoRun().run(1)


def test_task_defined_in_a_function_gets_adapters() -> None:
    class Local(Task[dict[str, int], tuple[int, ...]]):
        pass

    inp, out = adapters(Local)
    assert inp.validate_python({"a": "1"}) == {"a": 1}
    assert out.validate_python([1, 2]) == (1, 2)
