"""The experiments of the paper: networks as the original set them up, the methods of
Tables 1 and 2, the resumable grid behind `cqd-port reproduce`, `cqd-port train`, results.json,
and the CPU demo on synthetic data.

Bottom to top (docs/architecture.md): `tasks`, `methods`, `networks`, `settings` (`GridConfig`),
`notes`, `paper`, `results`; `job` (`RunJob`, the one identity), `runfolder` (a run folder's
lock, states and guard); `plan` (tables x methods x seeds x selection -> jobs); `run` (one job);
`launch`, `collect`, `dryrun`; at the top `grid` (`run_grid` / `submit_grid`), `demo`,
`custom` (`cqd-port train` / `evaluate`), `custom_demo`. Nothing below imports `grid`.
"""
