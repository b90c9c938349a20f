"""Platform lines → master SKUs: by merchant code (商家编码), then the explicit mapping table,
with bundles expanded into their components."""

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from models.domain import MasterSku, OrderLine, SkuMapping


@dataclass(frozen=True)
class ResolvedLine:
    sku: str
    qty: int


class SkuResolver:
    """Resolves order lines against one snapshot of the catalog (load it once per batch)."""

    def __init__(self, skus: Mapping[str, MasterSku], mappings: Sequence[SkuMapping]) -> None:
        self._skus = skus
        self._shop_mappings = {(m.shop, m.platform_sku): m for m in mappings}

    def _mapping(self, shop: str, key: str) -> SkuMapping | None:
        if not key:
            return None
        return self._shop_mappings.get((shop, key)) or self._shop_mappings.get(("*", key))

    def resolve(self, shop: str, line: OrderLine) -> list[ResolvedLine] | None:
        """The master SKUs one line ships as (bundles expanded), or None when it is unknown."""
        return self.resolve_key(shop, line.platform_sku_id, line.merchant_code, line.qty)

    def resolve_key(
        self, shop: str, platform_sku_id: str, merchant_code: str, qty: int = 1
    ) -> list[ResolvedLine] | None:
        """`resolve` for a listing's keys: what `qty` units of it ship as, or None."""
        master = self.master_of(shop, platform_sku_id, merchant_code)
        if master is None:
            return None
        return self._expand(master[0], qty * master[1])

    def master_of(
        self, shop: str, platform_sku_id: str, merchant_code: str
    ) -> tuple[str, int] | None:
        """(master SKU, units of it per platform unit) before bundle expansion, or None."""
        if merchant_code in self._skus:
            return merchant_code, 1
        mapping = self._mapping(shop, platform_sku_id) or self._mapping(shop, merchant_code)
        if mapping is None or mapping.sku not in self._skus:
            return None
        return mapping.sku, mapping.qty

    def expand(self, sku: str, qty: int = 1) -> list[ResolvedLine] | None:
        """`qty` units of master SKU `sku` as the SKUs that ship (bundles expanded), or None."""
        if sku not in self._skus:
            return None
        return self._expand(sku, qty)

    def _expand(self, sku: str, qty: int) -> list[ResolvedLine] | None:
        master = self._skus[sku]
        if not master.is_bundle:
            return [ResolvedLine(sku, qty)]
        expanded: list[ResolvedLine] = []
        for component in master.components:
            if component.sku not in self._skus:
                return None  # a bundle of something the catalog does not know cannot ship
            parts = self._expand(component.sku, qty * component.qty)
            if parts is None:
                return None
            expanded.extend(parts)
        return expanded

    def known(self, sku: str) -> bool:
        return sku in self._skus
