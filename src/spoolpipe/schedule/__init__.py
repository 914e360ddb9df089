"""Schedules: rules in the configuration that turn clock ticks into activities.

``rules`` is the pure core (the rule model, which ticks are due, the id of a
tick), ``state`` the per-rule state file ``REPO/schedules/NAME.json``,
``fire`` the worker's side that publishes due ticks, ``report`` what
``spoolpipe schedule`` shows. The contract is in docs/repository-format.md
(*Schedules*) and docs/operations.md (*Schedules*).
"""
