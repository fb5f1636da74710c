"""The price table (`quantserve/prices.yaml`): what one replica's hardware costs per hour, and where that figure
came from.

Serving reads it for the cost metrics, load tests and the planner for $ per 1M tokens.
"""

from __future__ import annotations

from datetime import date
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

DEFAULT_PRICES_PATH = Path(__file__).with_name("prices.yaml")


class PriceError(ValueError):
    """The price table is missing, invalid, or lacks a profile; the message is meant for the user."""


class PriceProfile(BaseModel):
    """One hardware profile: what one replica's machine costs per hour, and where that figure came from."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    description: str = ""
    usd_per_hour: float = Field(gt=0)
    source: str = Field(min_length=1)
    recorded: date = Field(description="Date the price was recorded (YYYY-MM-DD)")


class PriceTable(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    profiles: dict[str, PriceProfile]


def load_prices(path: str | Path = DEFAULT_PRICES_PATH) -> PriceTable:
    try:
        raw = yaml.safe_load(Path(path).read_text())
        return PriceTable.model_validate(raw)
    except FileNotFoundError:
        raise PriceError(f"price table {path} not found") from None
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors())
        raise PriceError(f"invalid price table {path}: {problems}") from None
    except (OSError, yaml.YAMLError) as exc:
        raise PriceError(f"cannot read price table {path}: {exc}".splitlines()[0]) from None


def price_per_hour(table: PriceTable, profile: str, replicas: int = 1) -> float:
    """$ per hour for `replicas` replicas on `profile`."""
    if profile not in table.profiles:
        known = ", ".join(sorted(table.profiles))
        raise PriceError(f"unknown hardware profile {profile!r}; prices.yaml has {known}")
    if replicas < 1:
        raise PriceError(f"replicas must be at least 1, got {replicas}")
    return table.profiles[profile].usd_per_hour * replicas
