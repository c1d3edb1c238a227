"""TPC-H: five sources, their silver tables, customer change events, three gold tables."""
