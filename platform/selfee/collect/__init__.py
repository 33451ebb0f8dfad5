"""Collection: the SelFee sources' public formats → Instruction rows (ARCHITECTURE.md)."""
