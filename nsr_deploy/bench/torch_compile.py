"""The bench's competitor row: the sparse reference network under ``torch.compile`` (inductor, CPU), what a
PyTorch user would deploy instead. Inductor needs a C++ compiler; when compiling fails, the row says why."""

from __future__ import annotations

from nsr_deploy.core.errors import NSRError

COMPILE_FORM = "torch.compile"  # the torch spec's form: inductor, CPU, static shapes


def compiled_runner(loaded, threads: int, size: int, batch: int):
    """A torch runner whose network is ``torch.compile``-d (inductor) for ``batch`` patches of ``size``;
    compiled on activation, so a failure (no C++ compiler) is an NSRError naming why."""
    from nsr_deploy.runtimes.torch.runner import TorchRunner

    class CompiledRunner(TorchRunner):
        def _activate(self) -> None:
            import numpy as np
            import torch

            super()._activate()
            net, mean = self.net, self.config.image_mean

            def patches(x, valid):
                return net.finish(net.head_tail(x - mean, valid))

            self._compiled = torch.compile(patches, backend="inductor", dynamic=False)
            x = np.zeros((batch, self.config.channels, size, size), np.float32)
            try:  # the first call compiles: do it here so a failure is this row's error
                self._infer(x, np.ones((batch, 1, size, size), np.float32))
            except Exception as e:  # noqa: BLE001 - inductor raises many types (compiler missing, lowering)
                first = (str(e).strip().splitlines() or [type(e).__name__])[0][:200]
                raise NSRError(f"torch.compile (inductor) failed: {first}") from None

        def _infer(self, x, valid):
            import torch

            with torch.no_grad():
                return self._compiled(torch.from_numpy(x), torch.from_numpy(valid)).numpy()

    return CompiledRunner(loaded.source, threads, net=loaded.net)
