"""A nested pydantic model for the payload sweep, and a task echoing it.

Kept out of run.py so that the workers of the other benchmarks (which re-run
run.py) do not pay for building these models; this task's worker imports this
module instead.
"""

from __future__ import annotations

import datetime as dt

from pydantic import BaseModel

from tarnish_py import Task

__all__ = ["EchoOrder", "Order", "sample_order"]


class Line(BaseModel):
    sku: str
    quantity: int
    price: float
    tags: list[str]
    attributes: dict[str, str]
    shipped: dt.datetime | None = None


class Order(BaseModel):
    id: int
    customer: str
    created: dt.datetime
    due: dt.date
    lines: list[Line]
    totals: dict[str, float]
    history: list[dt.datetime]


class EchoOrder(Task[Order, Order]):
    def run(self, order: Order) -> Order:
        return order


def sample_order() -> Order:
    now = dt.datetime(2024, 5, 17, 12, 30, 15, 123456, tzinfo=dt.timezone.utc)
    return Order(
        id=42,
        customer="ACME Corporation",
        created=now,
        due=now.date(),
        lines=[
            Line(
                sku=f"SKU-{i:05d}",
                quantity=i + 1,
                price=9.99 * (i + 1),
                tags=["fragile", "blue", f"batch-{i}"],
                attributes={"colour": "blue", "size": "M", "origin": "DE"},
                shipped=now if i % 2 else None,
            )
            for i in range(10)
        ],
        totals={"net": 549.45, "tax": 104.4, "gross": 653.85},
        history=[now - dt.timedelta(hours=h) for h in range(5)],
    )
