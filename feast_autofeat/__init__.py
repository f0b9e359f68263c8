"""feast-autofeat: learned features as first-class Feast feature views."""

from feast_autofeat.errors import AutofeatError

__version__ = "0.1.0"
__all__ = ["AutofeatError", "__version__"]
