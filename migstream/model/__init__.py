"""Immutable results of a parse: records, RAM blocks and page runs, device state, vCPUs."""
