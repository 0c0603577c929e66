"""The benchmark table: `python -m sparserl.bench [--quick] [--peers] [--json PATH] [--rows NAME,...]`.

Every row is a ratio of two things measured side by side in one process (or in child processes started one after
the other), so that a loaded machine slows both sides alike; absolute times are printed for context only. Each
row is a module of this package with a `rows(settings) -> list[Row]` function, named in `cli.ROWS`; the command
imports a row's module only when that row runs. The shared pieces: `table` (Row, Settings, the printed table),
`timing` (interleaved timing, steady rates read from a run's metrics), `training` (runs built by
`sparserl.train`'s own config resolution and run preparation), `agent_programs` (an agent's jitted update on
random batches), `workloads` (the settings shared with sbx and the child processes), `sbx_peer` (sbx's side).
"""
