"""A small CenterNet ("objects as points") digit detector: data, float model, decoding, COCO evaluation.

* ``detector.dataset`` -- deterministic detection canvases from scikit-learn's bundled handwritten digits;
* ``detector.model`` -- the architecture (``ARCH``, layer by layer) and float32 NumPy inference;
* ``detector.decode`` -- CenterNet decoding (sigmoid or sigmoid LUT, 3x3 peak test, stable top-K, boxes);
* ``detector.evaluate`` -- COCO mAP@[.5:.95] with pycocotools;
* ``detector.train`` -- the PyTorch training script (optional extra ``train``), ``python -m detector.train``.

The trained BN-folded weights and the training framework's reference outputs
ship in ``detector/weights/``. See docs/detector.md.
"""
