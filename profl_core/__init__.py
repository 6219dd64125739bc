"""ProFL memory bench: the library.

Everything here takes its inputs through arguments: no argv, no environment, no working
directory, no printing and no global random state. See DESIGN.md §2.
"""

__version__ = "0.1.0"
