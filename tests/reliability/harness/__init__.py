"""The reliability tier's harness: fault injection at every boundary (`faults`), the pytest fixtures that
install it (`fixtures`), the context a fault-matrix row runs in (`context`), the drivers that run the
refresher, a meter_events consumer and meter_query through a fault (`refresher`, `consumer`, `query`), the row
check (`check`), the modelled containers of the storm tests (`storms`) and the single-flight waiters a test
synchronises on (`threads`)."""
