"""Bridges to other toolkits. Each bridge is its own module behind an extra and is never imported from here:

- :mod:`modelsteal.interop.art`: the Adversarial Robustness Toolbox (``pip install 'modelsteal[interop]'``).
"""
