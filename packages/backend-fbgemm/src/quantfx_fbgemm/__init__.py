"""quantfx backend for x86 server CPUs: lowering to torch's native int8 kernels (oneDNN).

The kernel layer is :mod:`quantfx_fbgemm.kernels`; the plugin module
(``quantfx_fbgemm.plugin``) registers the backend with quantfx-core.
"""

__version__ = "0.1.0"
