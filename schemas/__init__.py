"""Pandera models of the silver tables: the single source of truth for their columns, types and row rules."""

from schemas.tpch import Customer, Lineitem, Nation, Orders, Region

__all__ = ["Customer", "Lineitem", "Nation", "Orders", "Region"]
