"""SelFee on Ray: collect, augment, train, generate with revision control, serve and judge."""

__version__ = "0.1.0"
