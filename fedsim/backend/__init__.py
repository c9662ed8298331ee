"""How clients run: ``ray_pool`` (Ray actors) and ``local`` (in-process).

Only this package imports Ray.
"""

from fedsim.backend.base import Backend, ClientResult

__all__ = ["Backend", "ClientResult"]
