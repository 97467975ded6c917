"""Train the digit CenterNet with PyTorch and export BN-folded weights + reference outputs.

    pip install -e '.[train]'          # torch==2.13.0 (CPU build)
    python -m detector.train           # ~minutes on 2 cores; writes detector/weights/*.npz

Never needed to run anything else: the trained weights ship in
``detector/weights/`` and inference/evaluation are pure NumPy
(``detector.model.forward``, ``detector.evaluate``).

Recipe (deterministic: fixed seeds, ``torch.use_deterministic_algorithms``,
2 threads, data regenerated from ``detector.dataset``'s seeds):

* model: ``detector.model.ARCH`` built as torch modules (Conv2d / ConvTranspose2d
  with BatchNorm2d + ReLU where the layer says so); the heatmap head's final
  bias starts at -2.19 (CenterNet), everything else at PyTorch's default init;
* data: ``--per-epoch`` fresh training canvases per epoch (epoch ``e`` uses the
  train split's stream ``epoch=e``: new positions, sizes and digit draws every
  epoch, digits only from the train source images);
* loss (CenterNet): penalty-reduced pixel-wise focal loss (alpha = 2, beta = 4)
  on ``clamp(sigmoid(hm), 1e-4, 1 - 1e-4)`` against the Gaussian-splatted
  heatmap, normalised by the number of objects; L1 on ``wh`` (weight 0.1) and
  ``reg`` (weight 1) read at the objects' integer centers;
* optimiser: Adam, lr ``--lr`` with 1 epoch linear warm-up then cosine decay to
  0, batch ``--batch``.

Export: BatchNorm folded into the convolutions (``detector.model.fold_bn``),
float32 ``weights/centernet_digits.npz``; the eval-mode torch outputs (BN not
folded) for the first ``N_REF`` test canvases go to
``weights/reference_outputs.npz`` with the training metadata, so the NumPy
inference is checked against the training framework without torch.
"""
from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from . import dataset as D
from .model import ARCH, HEADS, HM_BIAS_INIT, REFERENCE_FILE, WEIGHTS_FILE, fold_bn, forward, macs

N_REF = 4              #: test canvases whose torch outputs are saved
N_EVAL_SUBSET = 100    #: the test's quick mAP check runs on the first N_EVAL_SUBSET test canvases
MAX_OBJS = D.MAX_DIGITS
WH_WEIGHT, OFF_WEIGHT = 0.1, 1.0


class CenterNet(nn.Module):
    """``ARCH`` as torch modules; forward returns {"hm", "wh", "reg"} like detector.model.forward."""

    def __init__(self, arch=ARCH):
        super().__init__()
        self.arch = arch
        self.convs = nn.ModuleDict()
        self.bns = nn.ModuleDict()
        for L in arch:
            if L.op == "conv":
                self.convs[L.name] = nn.Conv2d(L.cin, L.cout, L.k, L.stride, L.padding, groups=L.groups, bias=not L.bn)
            elif L.op == "convT":
                self.convs[L.name] = nn.ConvTranspose2d(L.cin, L.cout, L.k, L.stride, L.padding, groups=L.groups,
                                                        bias=not L.bn)
            if L.bn:
                self.bns[L.name] = nn.BatchNorm2d(L.cout)
        with torch.no_grad():
            self.convs["hm"].bias.fill_(HM_BIAS_INIT)

    def forward(self, x):
        env = {"image": x}
        for L in self.arch:
            if L.op == "add":
                y = env[L.inputs[0]] + env[L.inputs[1]]
            else:
                y = self.convs[L.name](env[L.inputs[0]])
                if L.bn:
                    y = self.bns[L.name](y)
            if L.relu:
                y = F.relu(y)
            env[L.name] = y
        return {h: env[h] for h in HEADS}

    def export(self) -> dict:
        """BN-folded float32 weights, keyed ``<layer>.weight`` / ``<layer>.bias`` (detector.model layout)."""
        out = {}
        for L in self.arch:
            if not L.has_weights:
                continue
            conv = self.convs[L.name]
            w = conv.weight.detach().double().numpy()
            b = None if conv.bias is None else conv.bias.detach().double().numpy()
            if L.bn:
                bn = self.bns[L.name]
                w, b = fold_bn(w, b, bn.weight.detach().double().numpy(), bn.bias.detach().double().numpy(),
                               bn.running_mean.double().numpy(), bn.running_var.double().numpy(), bn.eps,
                               transposed=L.op == "convT")
            out[f"{L.name}.weight"] = np.asarray(w, np.float32)
            out[f"{L.name}.bias"] = np.asarray(b, np.float32)
        return out


def focal_loss(logits: torch.Tensor, gt: torch.Tensor) -> torch.Tensor:
    """CenterNet's penalty-reduced focal loss (alpha 2, beta 4), normalised by the positives (gt == 1)."""
    pred = torch.sigmoid(logits).clamp(1e-4, 1 - 1e-4)
    pos = gt.eq(1).float()
    neg_w = (1 - gt).pow(4) * (1 - pos)
    pos_loss = (torch.log(pred) * (1 - pred).pow(2) * pos).sum()
    neg_loss = (torch.log(1 - pred) * pred.pow(2) * neg_w).sum()
    return -(pos_loss + neg_loss) / pos.sum().clamp(min=1)


def reg_l1(out: torch.Tensor, ind: torch.Tensor, mask: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """L1 between ``out`` (N, 2, H, W) read at flat indices ``ind`` (N, K) and ``target`` (N, K, 2), masked."""
    n, c = out.shape[:2]
    pred = out.view(n, c, -1).gather(2, ind.unsqueeze(1).expand(n, c, ind.shape[1])).permute(0, 2, 1)
    m = mask.unsqueeze(2)
    return (torch.abs(pred - target) * m).sum() / (m.sum() * c + 1e-4)


def batch_targets(c: D.Canvases) -> dict:
    """Stack detector.dataset.encode_targets over canvases as torch tensors (+ the input images)."""
    ts = [D.encode_targets(b, k, MAX_OBJS) for b, k in zip(c.boxes, c.classes)]
    out = {k: torch.from_numpy(np.stack([t[k] for t in ts])) for k in ts[0]}
    out["image"] = torch.from_numpy(c.images.astype(np.float32) / np.float32(255.0))
    return out


def losses(model, t) -> dict:
    o = model(t["image"])
    hm = focal_loss(o["hm"], t["hm"])
    wh = reg_l1(o["wh"], t["ind"], t["mask"], t["wh"])
    off = reg_l1(o["reg"], t["ind"], t["mask"], t["reg"])
    return {"loss": hm + WH_WEIGHT * wh + OFF_WEIGHT * off, "hm": hm, "wh": wh, "off": off}


def train(epochs: int, per_epoch: int, batch: int, lr: float, seed: int, log=print,
          snapshot: Path | None = None) -> tuple[CenterNet, dict]:
    """Train from scratch; ``snapshot``: also write the BN-folded weights there after every epoch."""
    torch.manual_seed(seed)
    torch.set_num_threads(2)
    torch.use_deterministic_algorithms(True)
    model = CenterNet()
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    steps_per_epoch = per_epoch // batch
    total = epochs * steps_per_epoch
    warm = steps_per_epoch

    def lr_at(step):
        if step < warm:
            return lr * (step + 1) / warm
        return lr * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))

    step = 0
    t0 = time.perf_counter()
    history = []
    for ep in range(epochs):
        model.train()
        data = batch_targets(D.make_split("train", n=steps_per_epoch * batch, epoch=ep))
        sums = {}
        for s in range(steps_per_epoch):
            sl = slice(s * batch, (s + 1) * batch)
            for g in opt.param_groups:
                g["lr"] = lr_at(step)
            ls = losses(model, {k: v[sl] for k, v in data.items()})
            opt.zero_grad(set_to_none=True)
            ls["loss"].backward()
            opt.step()
            step += 1
            for k, v in ls.items():
                sums[k] = sums.get(k, 0.0) + float(v.detach())
        rec = {k: v / steps_per_epoch for k, v in sums.items()}
        rec.update(epoch=ep, seconds=time.perf_counter() - t0)
        history.append(rec)
        if snapshot is not None:
            model.eval()
            np.savez(snapshot, **model.export())
        log(json.dumps({k: round(v, 4) if isinstance(v, float) else v for k, v in rec.items()}), flush=True)
    return model, {"train_seconds": time.perf_counter() - t0, "history": history}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--per-epoch", type=int, default=1536, help="fresh training canvases per epoch")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--out", type=Path, default=WEIGHTS_FILE.parent, help="output directory")
    ap.add_argument("--snapshot", type=Path, default=None, help="write folded weights here after each epoch")
    a = ap.parse_args(argv)
    model, meta = train(a.epochs, a.per_epoch, a.batch, a.lr, a.seed, snapshot=a.snapshot)
    model.eval()
    params = model.export()
    ref = D.make_split("test", N_REF)
    with torch.no_grad():
        o = model(torch.from_numpy(ref.images.astype(np.float32) / np.float32(255.0)))
    ref_out = {k: v.numpy().astype(np.float32) for k, v in o.items()}
    np_out = forward(params, ref.images)
    diff = max(float(np.max(np.abs(np_out[k] - ref_out[k]))) for k in HEADS)

    from .evaluate import evaluate  # NumPy + pycocotools
    res = {s: evaluate(params, s) for s in ("val", "test")}
    sub = {"n": N_EVAL_SUBSET, **evaluate(params, "test", N_EVAL_SUBSET)}
    meta.update(args={k: str(v) for k, v in vars(a).items()}, torch=torch.__version__, numpy_vs_torch_max_abs=diff,
                macs=int(sum(macs().values())), val=res["val"], test=res["test"], test_subset=sub,
                test_digest=D.digest(D.make_split("test")))
    a.out.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(a.out / WEIGHTS_FILE.name, **params)
    np.savez_compressed(a.out / REFERENCE_FILE.name, images=ref.images, **ref_out,
                        meta=np.array(json.dumps(meta)))
    print(json.dumps({k: v for k, v in meta.items() if k != "history"}, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
