"""Ketta's own HTTP surface beside Letta's routes: the pools, provider-health, usage and user-token
routers, the web login, the Letta routes closed, the cancel-on-disconnect middleware. Mounted by
:mod:`ketta.app`.
"""
