"""Catalog import: master SKUs (with bundles) and explicit platform-SKU mappings from CSV.

Two file shapes, told apart by the header:
- master SKUs: `sku,name,barcode,weight_kg[,bundle_of]`, where `bundle_of` is `SKU*qty;SKU*qty`;
- mappings: `platform_sku,sku[,qty][,shop]` (no `shop` or an empty one means every shop).

A bad line is reported with its number and skipped; it never aborts the rest of the file.
"""

import csv
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from pathlib import Path

from pydantic import ValidationError

from config import Settings
from models.domain import BundleComponent, HoldReason, MasterSku, SkuMapping
from models.store import Store
from sync.review import review_pending

SKU_COLUMNS = ("sku", "name", "barcode", "weight_kg")
MAPPING_COLUMNS = ("platform_sku", "sku")


class CatalogFileError(ValueError):
    """The file is not a catalog file at all (unreadable, or an unknown header)."""


@dataclass
class CatalogFile:
    skus: list[MasterSku] = field(default_factory=list)
    mappings: list[SkuMapping] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    """`line N: reason` for each line that was skipped."""
    requeued: int = 0
    """Orders held for unknown SKUs that were reviewed again after the import."""


def parse_bundle(text: str) -> tuple[BundleComponent, ...]:
    components = []
    for part in filter(None, (p.strip() for p in text.split(";"))):
        sku, _, qty = part.partition("*")
        if not sku.strip():
            raise ValueError(f"bundle part {part!r} has no SKU")
        try:
            components.append(BundleComponent(sku=sku.strip(), qty=int(qty) if qty else 1))
        except (ValueError, ValidationError):
            raise ValueError(f"bundle part {part!r} is not SKU*qty with qty ≥ 1") from None
    return tuple(components)


def parse_catalog(path: Path) -> CatalogFile:
    try:
        text = path.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        raise CatalogFileError(f"cannot read {path}: {exc}") from None
    reader = csv.DictReader(text.splitlines())
    header = [h.strip() for h in reader.fieldnames or []]
    reader.fieldnames = header
    result = CatalogFile()
    if all(c in header for c in SKU_COLUMNS):
        parse_line = _sku_line
    elif all(c in header for c in MAPPING_COLUMNS):
        parse_line = _mapping_line
    else:
        raise CatalogFileError(
            f"{path}: unknown header {header}; expected {','.join(SKU_COLUMNS)}[,bundle_of] "
            f"or {','.join(MAPPING_COLUMNS)}[,qty][,shop]"
        )
    for line_no, row in enumerate(reader, start=2):
        values = {k: (v or "").strip() for k, v in row.items() if k}
        try:
            parse_line(values, result)
        except (ValueError, ValidationError, InvalidOperation) as exc:
            reason = exc.errors()[0]["msg"] if isinstance(exc, ValidationError) else str(exc)
            result.errors.append(f"line {line_no}: {reason or 'invalid value'}")
    known = {s.sku for s in result.skus}
    for sku in result.skus:
        missing = [c.sku for c in sku.components if c.sku not in known]
        if missing:
            result.errors.append(f"bundle {sku.sku}: components {missing} are not in this file")
    return result


def _sku_line(values: dict[str, str], result: CatalogFile) -> None:
    if not values["sku"]:
        raise ValueError("empty sku")
    try:
        weight = Decimal(values["weight_kg"] or "0")
    except InvalidOperation:
        raise ValueError(f"weight_kg {values['weight_kg']!r} is not a number") from None
    result.skus.append(
        MasterSku(
            sku=values["sku"],
            name=values["name"],
            barcode=values["barcode"],
            weight_kg=weight,
            components=parse_bundle(values.get("bundle_of", "")),
        )
    )


def _mapping_line(values: dict[str, str], result: CatalogFile) -> None:
    if not values["platform_sku"] or not values["sku"]:
        raise ValueError("platform_sku and sku are required")
    result.mappings.append(
        SkuMapping(
            shop=values.get("shop") or "*",
            platform_sku=values["platform_sku"],
            sku=values["sku"],
            qty=int(values.get("qty") or 1),
        )
    )


async def import_catalog(store: Store, settings: Settings, path: Path) -> CatalogFile:
    """Store the file's good lines, and review again the orders held for unknown SKUs (in one
    transaction): those whose SKUs are now known pass; the others stay held."""
    parsed = parse_catalog(path)
    async with store.transaction() as tx:
        if parsed.skus:
            await tx.upsert_master_skus(parsed.skus)
        if parsed.mappings:
            await tx.upsert_mappings(parsed.mappings)
        parsed.requeued = await tx.requeue_held(HoldReason.UNKNOWN_SKU)
        if parsed.requeued:
            await review_pending(tx, settings)
    return parsed
