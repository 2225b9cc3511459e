"""The reliability tier's harness: fault injection at every boundary (`faults`), the pytest fixtures that
install it (`fixtures`), the context a fault-matrix row runs in (`context`), the drivers that run the
refresher and a consumer through a fault (`refresher`, `consumer`), the row check (`check`) and the
modelled containers of the storm tests (`storms`)."""
