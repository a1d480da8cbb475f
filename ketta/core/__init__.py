"""Foundations: settings, KETTA_HOME, logging and the console, the patch machinery.

Imports nothing else of Ketta (only ``ketta`` itself for its version); everything may import it.
"""
