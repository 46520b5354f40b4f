"""The `cqd-port` command line: a thin layer over the library."""
