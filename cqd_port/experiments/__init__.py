"""The experiments of the paper: networks as the original set them up, the methods of
Tables 1 and 2, the resumable grid behind `cqd-port reproduce`, results.json, and the
CPU demo on synthetic data.

Modules: `tasks` (domains and hyper-parameters), `networks` (initializeNetwork.m),
`methods` (what one run does), `grid` (planning and running), `results` (results.json,
Markdown), `paper` (the paper's numbers), `demo` (`cqd-port demo`).
"""
