"""Checks of an engine against the PyTorch reference: comparisons, task-quality metrics, the verdict of
each precision's gate, and typed results that serialise themselves into the manifest and the bench
report. Below the exporters and the bench (it imports neither): both judge engines with the same code.

``results``   :class:`Check` and :class:`GateResult` (frozen), ``to_manifest()`` / ``to_report()``
``compare``   engine outputs vs the reference: random patches, real tiles, real images
``metrics``   PSNR / SSIM as the paper reports them
``task``      the restoration task a model solves, its degradations, task PSNR, reading image folders
``verdicts``  the documented tolerances and the fp32 / fp16 / int8 judges
``samples``   the bundled sample photos the gates run on
"""
