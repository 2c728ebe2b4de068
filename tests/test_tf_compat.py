"""TensorFlow is only a helper: it must never hold an accelerator."""

from mmssl_jax.tf_compat import import_tensorflow


def test_tensorflow_sees_no_accelerator():
    tf = import_tensorflow()
    assert tf.config.get_visible_devices("GPU") == []
    assert [d.device_type for d in tf.config.get_visible_devices()] == ["CPU"]
