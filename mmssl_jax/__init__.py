"""mmssl_jax: self-supervised multimodal representation learning in JAX/Flax.

Import what you need from its modules, e.g. ``from mmssl_jax import losses``. Importing the
package itself is light: it pulls in neither TensorFlow nor the data pipelines.
"""

__version__ = "0.1.0"
