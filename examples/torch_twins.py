"""The examples' twins in PyTorch: the same networks, trained the same way.

Each twin has the example's layers and sizes, under the same parameter names (so a dln state
dict loads into it by name and back), PyTorch's default initialization (which is dln's), the
same optimizer and hyperparameters (and learning rate at every step, where the train section has
a cosine schedule), and it is fed exactly what `dln train` feeds: the same
held-out split (`dln.runtime.data.split`: for the char-LMs the end of the text), the same
shuffled order each epoch, the same batch size (the last batch short), the same noise for the
GAN, the same gradient clipping; for the GCN, the whole karate graph each step, validated on its
held-out nodes (`validate = { mask = "val_mask" }`).  (The denoising autoencoder's noise is drawn inside
the model, by torch's generator on one side and dln's Philox counter on the other: the same
distribution, not the same numbers.)  CPU, float32.  It prints the metrics
`dln train` prints for its last epoch: training means over the epoch's batches, validation in
evaluation mode; `time` is the whole run's wall time (data, set-up, dln's compile), `epochs_time`
the epochs' alone (training steps and validation), `cpu` the process's CPU time.

    .venv/bin/python examples/torch_twins.py NAME|all        # PyTorch (NAME: a key of FILES)
    .venv/bin/python examples/torch_twins.py NAME|all --dln  # dln.train

Each side runs in its own process (two thread pools in one process, OpenBLAS's and PyTorch's,
slow each other down on a small machine); examples/README.md's numbers were taken with
OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1 on a shared 2-CPU machine.  For the GAN both sides also report what a
logistic-regression digits classifier (fit on the 1797 real digits) makes of 1000 generated
samples: how many of the 10 classes get at least 2% of them, the effective number of classes
exp(entropy of the class histogram), and the mean confidence of the classifier.
"""

from __future__ import annotations

import argparse
import itertools
import json
import math
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
FILES = {"cnn": "cnn_digits.dln", "dcgan": "dcgan_digits.dln", "autoencoder": "conv_autoencoder_digits.dln",
         "dae": "autoencoder_digits.dln", "lstm": "lstm_charlm.dln", "gru": "gru_charlm.dln",
         "gpt": "transformer_charlm.dln", "vit": "vit_digits.dln", "mlp": "mlp_digits.dln", "rnn": "rnn_digits.dln",
         "gan": "gan_digits.dln", "vae": "vae_digits.dln", "iris": "iris.dln", "gcn": "gcn_karate.dln",
         "transfer": "transfer_digits.dln"}
CHARLMS = ("lstm", "gru", "gpt")   # character-level language models of dataset("text")
FLAT = ("mlp", "rnn", "gan", "vae", "dae")   # fed the flattened digits x [N, 64]
GANS = ("dcgan", "gan")               # two objectives, D's then G's, on each batch
# The train sections' settings (the files are the reference; `settings_of` checks these against them).
SETTINGS = {
    "cnn": {"validate": 0.2, "lr": 1e-3, "betas": (0.9, 0.999), "batch": 64, "epochs": 15, "seed": 0},
    "dcgan": {"validate": None, "lr": 1e-3, "betas": (0.5, 0.999), "batch": 64, "epochs": 50, "seed": 0},
    "autoencoder": {"validate": 0.1, "lr": 2e-3, "betas": (0.9, 0.999), "batch": 64, "epochs": 20, "seed": 0},
    "dae": {"validate": 0.1, "lr": 2e-3, "betas": (0.9, 0.999), "batch": 64, "epochs": 30, "seed": 0},
    "lstm": {"validate": 0.1, "lr": 3e-3, "betas": (0.9, 0.999), "batch": 32, "epochs": 8, "seed": 0,
             "clip_grad": 1.0},
    "gru": {"validate": 0.1, "lr": 3e-3, "betas": (0.9, 0.999), "batch": 32, "epochs": 8, "seed": 0,
            "clip_grad": 1.0},
    "gpt": {"validate": 0.1, "lr": 3e-3, "betas": (0.9, 0.999), "batch": 32, "epochs": 4, "seed": 0,
            "clip_grad": 1.0, "optimizer": "adamw", "weight_decay": 0.01, "warmup": 100},
    "vit": {"validate": 0.2, "lr": 3e-3, "betas": (0.9, 0.999), "batch": 64, "epochs": 30, "seed": 0,
            "optimizer": "adamw", "weight_decay": 0.01, "warmup": 50},
    "mlp": {"validate": 0.2, "lr": 1e-3, "betas": (0.9, 0.999), "batch": 64, "epochs": 30, "seed": 0},
    "rnn": {"validate": 0.2, "lr": 3e-3, "betas": (0.9, 0.999), "batch": 64, "epochs": 30, "seed": 0},
    "gan": {"validate": None, "lr": 2e-4, "betas": (0.5, 0.999), "batch": 64, "epochs": 20, "seed": 0},
    "vae": {"validate": 0.1, "lr": 1e-3, "betas": (0.9, 0.999), "batch": 64, "epochs": 30, "seed": 0},
    "iris": {"validate": 0.2, "lr": 1e-2, "betas": (0.9, 0.999), "batch": 16, "epochs": 60, "seed": 1,
             "optimizer": "adamw", "weight_decay": 1e-3, "warmup": 10},
    # batch is not used: the graph is one whole example, every step takes all of it
    "gcn": {"validate": {"mask": "val_mask"}, "lr": 0.01, "betas": (0.9, 0.999), "batch": 32, "epochs": 200,
            "seed": 0, "weight_decay": 5e-4},
}
VOCAB, DIM, HIDDEN = 103, 64, 256   # the char-LMs' hyperparameters
GPT = {"vocab": 103, "dim": 128, "layers": 2, "heads": 4, "ctx": 64}   # transformer_charlm's
Z = 16          # the GAN's noise size
BATCHNORM = True
SAMPLES = 1000  # generated digits scored for mode coverage


# ---- the networks -----------------------------------------------------------------------------------------------
def make_cnn(batchnorm: bool = BATCHNORM):
    import torch.nn as nn

    class CNN(nn.Module):
        """examples/cnn_digits.dln: conv1 -> bn1 -> relu -> pool -> conv2 -> bn2 -> relu -> pool -> fc1 -> logits."""

        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=not batchnorm)
            self.conv2 = nn.Conv2d(16, 32, 3, padding=1, bias=not batchnorm)
            if batchnorm:
                self.bn1 = nn.BatchNorm2d(16, momentum=0.1, eps=1e-5)
                self.bn2 = nn.BatchNorm2d(32, momentum=0.1, eps=1e-5)
            self.fc1 = nn.Linear(32 * 2 * 2, 64)
            self.logits = nn.Linear(64, 10)

        def forward(self, images):
            import torch.nn.functional as F

            h = self.conv1(images)
            h = F.max_pool2d(F.relu(self.bn1(h) if batchnorm else h), 2)
            h = self.conv2(h)
            h = F.max_pool2d(F.relu(self.bn2(h) if batchnorm else h), 2)
            h = F.relu(self.fc1(h.flatten(1)))
            return self.logits(h)

    return CNN()


def make_dcgan(batchnorm: bool = BATCHNORM):
    import torch.nn as nn
    import torch.nn.functional as F

    c = 16

    class Generator(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.seed = nn.Linear(Z, 2 * c * 4)
            self.up1 = nn.ConvTranspose2d(2 * c, c, 4, stride=2, padding=1, bias=not batchnorm)
            if batchnorm:
                self.bn1 = nn.BatchNorm2d(c)
            self.image = nn.ConvTranspose2d(c, 1, 4, stride=2, padding=1)

        def forward(self, noise):
            h = F.relu(self.seed(noise)).reshape(-1, 2 * c, 2, 2)
            h = self.up1(h)
            h = F.relu(self.bn1(h) if batchnorm else h)
            return torch_sigmoid(self.image(h))

    class Discriminator(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.down1 = nn.Conv2d(1, c, 4, stride=2, padding=1)
            self.down2 = nn.Conv2d(c, 2 * c, 4, stride=2, padding=1)
            self.score = nn.Linear(2 * c * 4, 1)

        def forward(self, image):
            h = F.leaky_relu(self.down1(image), 0.2)
            h = F.leaky_relu(self.down2(h), 0.2)
            return self.score(h.flatten(1))

    return _gan(Generator(), Discriminator())


def _gan(generator, discriminator):
    """The GAN examples' two instances, G and D, under one module (parameters G.*, D.*)."""
    import torch.nn as nn

    gan = nn.Module()
    gan.G, gan.D = generator, discriminator
    return gan


def make_autoencoder():
    import torch.nn as nn
    import torch.nn.functional as F

    c, code = 16, 16

    class ConvAutoencoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc1 = nn.Conv2d(1, c, 3, stride=2, padding=1)
            self.enc2 = nn.Conv2d(c, 2 * c, 3, stride=2, padding=1)
            self.z = nn.Linear(2 * c * 4, code)
            self.seed = nn.Linear(code, 2 * c * 4)
            self.dec1 = nn.ConvTranspose2d(2 * c, c, 4, stride=2, padding=1)
            self.recon = nn.ConvTranspose2d(c, 1, 4, stride=2, padding=1)

        def forward(self, images):
            h = F.relu(self.enc2(F.relu(self.enc1(images))))
            z = self.z(h.flatten(1))
            h = F.relu(self.seed(z)).reshape(-1, 2 * c, 2, 2)
            return torch_sigmoid(self.recon(F.relu(self.dec1(h))))

    return ConvAutoencoder()


def make_dense_autoencoder(d: int = 64, hidden: int = 32, code: int = 16, noise: float = 0.2):
    """examples/autoencoder_digits.dln: noise added in the model (training and evaluation alike, as
    randn_like draws in both modes), 64 -> 32 -> 16 -> 32 -> 64, sigmoid."""
    import torch
    import torch.nn as nn

    class DenseAutoencoder(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.z = nn.ModuleDict({"linear_0": nn.Linear(d, hidden), "linear_1": nn.Linear(hidden, code)})
            self.recon = nn.ModuleDict({"linear_0": nn.Linear(code, hidden), "linear_1": nn.Linear(hidden, d)})

        def forward(self, x):
            noisy = x + noise * torch.randn_like(x)
            z = torch.relu(self.z.linear_1(torch.relu(self.z.linear_0(noisy))))
            return torch_sigmoid(self.recon.linear_1(torch.relu(self.recon.linear_0(z))))

    return DenseAutoencoder()


def torch_sigmoid(x):
    import torch

    return torch.sigmoid(x)


def make_charlm(kind: str, vocab: int = VOCAB, dim: int = DIM, hidden: int = HIDDEN):
    """examples/lstm_charlm.dln, gru_charlm.dln: embed -> lstm (gru) -> logits, batch first."""
    import torch.nn as nn

    class CharLM(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab, dim)
            setattr(self, kind, (nn.LSTM if kind == "lstm" else nn.GRU)(dim, hidden, batch_first=True))
            self.logits = nn.Linear(hidden, vocab)

        def forward(self, tokens):
            h, _ = getattr(self, kind)(self.embed(tokens))
            return self.logits(h)

    return CharLM()


def make_gpt(vocab: int = GPT["vocab"], dim: int = GPT["dim"], layers: int = GPT["layers"], heads: int = GPT["heads"],
             ctx: int = GPT["ctx"]):
    """examples/transformer_charlm.dln: embed + pos -> pre-LN decoder layers (causal nn.MultiheadAttention,
    4x GELU MLP) -> ln_f -> head (no bias).  The layers sit at `layer.<k>.block` as in the .dln file
    (the repeat's scope, then the block call's name)."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class MLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.fc = nn.Linear(dim, 4 * dim)
            self.proj = nn.Linear(4 * dim, dim)

        def forward(self, x):
            return self.proj(F.gelu(self.fc(x)))

    class DecoderLayer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln1 = nn.LayerNorm(dim)
            self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
            self.ln2 = nn.LayerNorm(dim)
            self.mlp = MLP()

        def forward(self, x, mask):
            a = self.ln1(x)
            x = x + self.attn(a, a, a, attn_mask=mask, need_weights=False)[0]
            return x + self.mlp(self.ln2(x))

    class GPTModel(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Embedding(vocab, dim)
            self.pos = nn.Embedding(ctx, dim)
            self.layer = nn.ModuleList(nn.ModuleDict({"block": DecoderLayer()}) for _ in range(layers))
            self.ln_f = nn.LayerNorm(dim)
            self.head = nn.Linear(dim, vocab, bias=False)

        def forward(self, tokens):
            t = tokens.shape[1]
            h = self.embed(tokens) + self.pos(torch.arange(t))
            mask = torch.ones(t, t, dtype=torch.bool).triu(1)   # True: may not attend (a later position)
            for layer in self.layer:
                h = layer["block"](h, mask)
            return self.head(self.ln_f(h))

    return GPTModel()


def make_vit(dim: int = 64, heads: int = 4, layers: int = 2, classes: int = 10):
    """examples/vit_digits.dln: 16 patches of 2x2 pixels -> embed + pos -> pre-LN encoder layers
    (nn.MultiheadAttention, not causal; a 2x GELU MLP) -> ln_f -> mean over patches -> head."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class EncoderLayer(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.ln1 = nn.LayerNorm(dim)
            self.attn = nn.MultiheadAttention(dim, heads, batch_first=True)
            self.ln2 = nn.LayerNorm(dim)
            self.fc = nn.Linear(dim, 2 * dim)
            self.proj = nn.Linear(2 * dim, dim)

        def forward(self, x):
            a = self.ln1(x)
            x = x + self.attn(a, a, a, need_weights=False)[0]
            return x + self.proj(F.gelu(self.fc(self.ln2(x))))

    class ViT(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.embed = nn.Linear(4, dim)
            self.pos = nn.Embedding(16, dim)
            self.layer = nn.ModuleList(nn.ModuleDict({"block": EncoderLayer()}) for _ in range(layers))
            self.ln_f = nn.LayerNorm(dim)
            self.head = nn.Linear(dim, classes)

        def forward(self, images):
            patches = images.reshape(-1, 4, 2, 4, 2).permute(0, 1, 3, 2, 4).reshape(-1, 16, 4)
            h = self.embed(patches) + self.pos(torch.arange(16))
            for layer in self.layer:
                h = layer["block"](h)
            return self.head(self.ln_f(h).mean(1))

    return ViT()


def make_mlp(hidden: int = 128, classes: int = 10, p: float = 0.1):
    """examples/mlp_digits.dln: h (linear, relu, dropout) -> logits."""
    import torch.nn as nn

    class MLP(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.h = nn.Linear(64, hidden)
            self.drop = nn.Dropout(p)
            self.logits = nn.Linear(hidden, classes)

        def forward(self, x):
            return self.logits(self.drop(self.h(x).relu()))

    return MLP()


def make_rnn(hidden: int = 64, classes: int = 10):
    """examples/rnn_digits.dln: each digit read row by row by a two-layer tanh RNN, the last state classified."""
    import torch.nn as nn

    class RNNDigits(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.h = nn.RNN(8, hidden, num_layers=2, batch_first=True)
            self.logits = nn.Linear(hidden, classes)

        def forward(self, x):
            h, _ = self.h(x.reshape(-1, 8, 8))
            return self.logits(h[:, -1])

    return RNNDigits()


def _stack(*sizes: int, between):
    """Linear layers named linear_0, linear_1, ... (as a pipe of unnamed `linear`s is), `between` after
    each but the last."""
    import torch.nn as nn

    class Stack(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            for k, (a, b) in enumerate(zip(sizes, sizes[1:])):
                setattr(self, f"linear_{k}", nn.Linear(a, b))

        def forward(self, x):
            for k in range(len(sizes) - 1):
                x = getattr(self, f"linear_{k}")(x)
                x = between(x) if k < len(sizes) - 2 else x
            return x

    return Stack()


def make_gan(d: int = 64):
    """examples/gan_digits.dln: G.image (noise -> 128 -> 64, sigmoid) and D.score (64 -> 128 -> 1)."""
    import torch.nn as nn
    import torch.nn.functional as F

    def leaky(x):
        return F.leaky_relu(x, 0.2)

    class Generator(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.image = _stack(Z, 128, d, between=leaky)

        def forward(self, noise):
            return torch_sigmoid(self.image(noise))

    class Discriminator(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.score = _stack(d, 128, 1, between=leaky)

        def forward(self, image):
            return self.score(image)

    return _gan(Generator(), Discriminator())


def make_vae(d: int = 64, z: int = 8):
    """examples/vae_digits.dln: h -> mu, logvar; code = mu + exp(logvar / 2) * noise; recon (code -> 128 ->
    64, sigmoid).  The forward returns recon, mu, logvar; `noise` replaces the draw (tests)."""
    import torch
    import torch.nn as nn

    class VAE(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.h = nn.Linear(d, 128)
            self.mu = nn.Linear(128, z)
            self.logvar = nn.Linear(128, z)
            self.recon = _stack(z, 128, d, between=torch.relu)

        def forward(self, x, noise=None):
            h = self.h(x).relu()
            mu, logvar = self.mu(h), self.logvar(h)
            noise = torch.randn_like(mu) if noise is None else noise   # drawn in evaluation mode too, as dln's
            code = mu + torch.exp(0.5 * logvar) * noise
            return torch_sigmoid(self.recon(code)), mu, logvar

    return VAE()


def make_iris(hidden: int = 16):
    """examples/iris.dln: logits (4 -> hidden, tanh -> 3)."""
    import torch
    import torch.nn as nn

    class Iris(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.logits = _stack(4, hidden, 3, between=torch.tanh)

        def forward(self, x):
            return self.logits(x)

    return Iris()


def make_gcn(features: int = 34, hidden: int = 16, classes: int = 2):
    """examples/gcn_karate.dln: gcn_conv -> relu -> gcn_conv, where gcn_conv(adj, out) is
    adj @ (x @ weight.T) + bias (weight [out, in] Xavier-uniform, bias zeros: dln's initialization)."""
    import torch
    import torch.nn as nn
    import torch.nn.functional as F

    class GCNConv(nn.Module):
        def __init__(self, n_in: int, n_out: int) -> None:
            super().__init__()
            self.weight = nn.Parameter(nn.init.xavier_uniform_(torch.empty(n_out, n_in)))
            self.bias = nn.Parameter(torch.zeros(n_out))

        def forward(self, x, adj):
            return adj @ (x @ self.weight.T) + self.bias

    class GCN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.h = GCNConv(features, hidden)
            self.logits = GCNConv(hidden, classes)

        def forward(self, x, adj):
            return self.logits(F.relu(self.h(x, adj)), adj)

    return GCN()


MAKERS = {"cnn": make_cnn, "dcgan": make_dcgan, "autoencoder": make_autoencoder,
          "lstm": lambda: make_charlm("lstm"), "gru": lambda: make_charlm("gru"), "gpt": make_gpt, "vit": make_vit,
          "dae": make_dense_autoencoder, "mlp": make_mlp, "rnn": make_rnn, "gan": make_gan, "vae": make_vae,
          "iris": make_iris, "gcn": make_gcn}


# ---- what dln train feeds -------------------------------------------------------------------------------------
def digits():
    from dln.runtime import data

    return data.DATASETS["digits"]()


def iris():
    from dln.runtime import data

    return data.DATASETS["iris"]()


def karate():
    """dataset("karate"): x, adj, y, mask (the labelled nodes), val_mask (the held-out ones)."""
    from dln.runtime import data

    return data.DATASETS["karate"]()


def text_windows(name: str):
    """What the char-LM's train section reads: dataset("text", ...) as x (tokens), y (targets)."""
    from dln.runtime import data

    return data.load(read_settings(name).data, HERE)


def split(arrays, fraction, seed):
    from dln.runtime import data

    if not fraction:
        return arrays, None
    return data.split(arrays, fraction, seed)


def epoch_batches(n: int, batch: int, seed: int, epoch: int):
    """The trainer's order: a permutation seeded by (seed, epoch), cut into batches, the last short."""
    order = np.random.default_rng(seed * 100003 + epoch).permutation(n)
    return [order[k * batch:(k + 1) * batch] for k in range(math.ceil(n / batch))]


# ---- training the twins ---------------------------------------------------------------------------------------
def train_torch(name: str, log=print) -> dict:
    import torch
    import torch.nn.functional as F

    if name == "gcn":
        return train_gcn(log)
    began, cpu = time.perf_counter(), time.process_time()   # data and set-up included, as on dln's side
    s = SETTINGS[name]
    torch.manual_seed(s["seed"])
    net = MAKERS[name]()
    if name in CHARLMS or name in FLAT or name == "iris":   # fed `x`; for the char-LMs the end of the text held out
        arrays = text_windows(name) if name in CHARLMS else iris() if name == "iris" else digits()
        train, val = split(arrays, s["validate"], s["seed"])
        train, val = ({"images": a["x"], "y": a["y"]} if a is not None else None for a in (train, val))
    else:
        train, val = split(digits(), s["validate"], s["seed"])
    n = len(train["y"])
    t = {k: torch.from_numpy(v) for k, v in train.items()}
    epochs_time = 0.0
    if name in GANS:
        opt_d = torch.optim.Adam(net.D.parameters(), lr=s["lr"], betas=s["betas"])
        opt_g = torch.optim.Adam(net.G.parameters(), lr=s["lr"], betas=s["betas"])
        fill = np.random.default_rng(s["seed"] + 1)   # the trainer's generator for `noise = randn`
    else:
        opt = make_optimizer(net, s)
    rates = step_rates(s, math.ceil(n / s["batch"]) * s["epochs"])
    for epoch in range(s["epochs"]):
        epoch_began = time.perf_counter()
        net.train()
        sums: dict[str, float] = {}
        for idx in epoch_batches(n, s["batch"], s["seed"], epoch):
            images = t["images"][idx]
            if name in GANS:
                noise = torch.from_numpy(fill.standard_normal((len(idx), Z)).astype(np.float32))
                # the two objectives in turn on the same batch, as the trainer runs them
                fake = net.G(noise)
                d_loss = F.binary_cross_entropy_with_logits(net.D(images), torch.ones(len(idx), 1)) + \
                    F.binary_cross_entropy_with_logits(net.D(fake.detach()), torch.zeros(len(idx), 1))
                opt_d.zero_grad()
                d_loss.backward()
                opt_d.step()
                fake = net.G(noise)
                g_loss = F.binary_cross_entropy_with_logits(net.D(fake), torch.ones(len(idx), 1))
                opt_g.zero_grad()
                g_loss.backward()
                opt_g.step()
                values = {"d_loss": d_loss.item(), "g_loss": g_loss.item()}
            else:
                values = _losses(name, net, images, t["y"][idx])
                for group in opt.param_groups:
                    group["lr"] = next(rates)
                opt.zero_grad()
                values["loss"].backward()
                if "clip_grad" in s:
                    torch.nn.utils.clip_grad_norm_(net.parameters(), s["clip_grad"])
                opt.step()
                values = {k: v.item() for k, v in values.items()}
            for k, v in values.items():
                sums[k] = sums.get(k, 0.0) + v * len(idx)
        record = {"epoch": epoch + 1, **{k: v / n for k, v in sums.items()}}
        if val is not None:
            net.eval()
            with torch.no_grad():
                vals = _losses(name, net, torch.from_numpy(val["images"]), torch.from_numpy(val["y"]))
            record.update({f"val_{k}": float(v) for k, v in vals.items()})
        epochs_time += time.perf_counter() - epoch_began
        log(json.dumps({k: round(v, 6) for k, v in record.items()}))
    record.update(time=time.perf_counter() - began, cpu=time.process_time() - cpu, epochs_time=epochs_time)
    if name in GANS:
        net.eval()
        with torch.no_grad():
            noise = np.random.default_rng(12345).standard_normal((SAMPLES, Z)).astype(np.float32)
            record.update(coverage(net.G(torch.from_numpy(noise)).numpy()))
    return record


def train_gcn(log=print) -> dict:
    """The GCN twin from PyTorch's initialization, trained as the train section says."""
    import torch

    began, cpu = time.perf_counter(), time.process_time()
    s = SETTINGS["gcn"]
    torch.manual_seed(s["seed"])
    net = make_gcn()
    graph = {k: torch.from_numpy(v) for k, v in karate().items()}
    epochs_began = time.perf_counter()
    for record in gcn_epochs(net, graph, s["epochs"]):
        log(json.dumps({k: round(v, 6) for k, v in record.items()}))
    return {**record, "time": time.perf_counter() - began, "cpu": time.process_time() - cpu,
            "epochs_time": time.perf_counter() - epochs_began}


def gcn_epochs(net, g: dict, epochs: int):
    """Each epoch's record of training `net` on the karate graph `g` (tensors): one step on the whole
    graph, the loss and the accuracy over the labelled nodes (`mask`), then both over the held-out
    nodes (`val_mask`) in evaluation mode."""
    import torch

    s = SETTINGS["gcn"]
    opt = make_optimizer(net, s)
    for epoch in range(epochs):
        net.train()
        values = gcn_losses(net, g, g["mask"])
        opt.zero_grad()
        values["loss"].backward()
        opt.step()
        record = {"epoch": epoch + 1, **{k: v.item() for k, v in values.items()}}
        net.eval()
        with torch.no_grad():
            record.update({f"val_{k}": v.item() for k, v in gcn_losses(net, g, g[s["validate"]["mask"]]).items()})
        yield record


def gcn_losses(net, g: dict, mask) -> dict:
    """The masked cross-entropy and the masked accuracy (the .dln file's `loss` and `accuracy`)."""
    import torch.nn.functional as F

    logits = net(g["x"], g["adj"])
    hits = (logits.argmax(1) == g["y"]).float()
    return {"loss": (F.cross_entropy(logits, g["y"], reduction="none") * mask).sum() / mask.sum(),
            "accuracy": (hits * mask).sum() / mask.sum()}


def make_optimizer(net, s: dict):
    """torch.optim.Adam (with the settings' weight decay, if any), or AdamW with theirs (on every
    parameter, as dln's)."""
    import torch

    if s.get("optimizer") == "adamw":
        return torch.optim.AdamW(net.parameters(), lr=s["lr"], betas=s["betas"], weight_decay=s["weight_decay"])
    return torch.optim.Adam(net.parameters(), lr=s["lr"], betas=s["betas"], weight_decay=s.get("weight_decay", 0.0))


def step_rates(s: dict, total: int):
    """The learning rate of each optimizer step: constant, or `cosine(warmup = w)` as the trainer
    counts it: a linear ramp over the first w steps (lr * (k + 1) / w), then a half cosine from lr
    down to 0 at the last of the `total` steps."""
    warmup = s.get("warmup")
    for k in itertools.count():
        if warmup is None:
            yield s["lr"]
        elif k < warmup:
            yield s["lr"] * (k + 1) / warmup
        else:
            progress = min((k - warmup) / max(1, total - warmup), 1.0)
            yield s["lr"] * 0.5 * (1.0 + math.cos(math.pi * progress))


def _losses(name: str, net, images, y) -> dict:
    import torch.nn.functional as F

    out = net(images)
    if name in ("cnn", "vit", "mlp", "rnn", "iris"):
        smoothing = 0.05 if name == "iris" else 0.0
        return {"loss": F.cross_entropy(out, y, label_smoothing=smoothing),
                "accuracy": (out.argmax(1) == y).float().mean()}
    if name == "vae":
        return {"loss": vae_loss(images, *out)}
    if name in CHARLMS:   # `images` are the token windows; classes on the last axis, every position counted
        return {"loss": F.cross_entropy(out.flatten(0, 1), y.flatten()),
                "accuracy": (out.argmax(-1) == y).float().mean()}
    return {"loss": F.binary_cross_entropy(out, images)}


def vae_loss(x, recon, mu, logvar):
    """examples/vae_digits.dln's loss: the summed BCE per digit plus the mean KL divergence."""
    import torch.nn.functional as F

    kl = -0.5 * (1 + logvar - mu ** 2 - logvar.exp()).sum(1)
    return F.binary_cross_entropy(recon, x, reduction="sum") / len(x) + kl.mean()


def train_dln(name: str) -> dict:
    import dln

    began, cpu = time.perf_counter(), time.process_time()
    history = dln.train(str(HERE / FILES[name]), progress=False, log=lambda s: None)
    # data and compile included, as in `dln train`'s wall time; epochs_time: the epochs alone
    record = {**history[-1], "time": time.perf_counter() - began, "cpu": time.process_time() - cpu,
              "epochs_time": sum(e["time"] for e in history.epochs)}
    if name in GANS:
        noise = np.random.default_rng(12345).standard_normal((SAMPLES, Z)).astype(np.float32)
        fake = history.model.run("fake", noise=noise)["fake"]
        record.update(coverage(np.asarray(fake)))
    return record


# ---- transfer learning: pretrain on digits 0-4, fine-tune on 5-9 from it and from scratch -------------------
TRANSFER_FROZEN = ("conv1", "bn1", "conv2", "bn2")   # the backbone's layers outside the finetune's `over`


def make_transfer_cnn(head: str):
    """examples/transfer_digits.dln's models: the backbone block at `features`, a 5-class head named `head`."""
    import torch.nn as nn
    import torch.nn.functional as F

    class Backbone(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(1, 16, 3, padding=1, bias=False)
            self.bn1 = nn.BatchNorm2d(16)
            self.conv2 = nn.Conv2d(16, 32, 3, padding=1, bias=False)
            self.bn2 = nn.BatchNorm2d(32)
            self.fc1 = nn.Linear(32 * 2 * 2, 64)

        def forward(self, images):
            h = F.max_pool2d(F.relu(self.bn1(self.conv1(images))), 2)
            h = F.max_pool2d(F.relu(self.bn2(self.conv2(h))), 2)
            return F.relu(self.fc1(h.flatten(1)))

    class TransferCNN(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.features = Backbone()
            setattr(self, head, nn.Linear(64, 5))
            self.head_name = head

        def forward(self, images):
            return getattr(self, self.head_name)(self.features(images))

    return TransferCNN()


def transfer_recipe(model: str):
    """The train section of one model of examples/transfer_digits.dln, as dln reads it."""
    import dln
    from dln.compiler.recipe import recipe_of
    from dln.runtime.train import find_train

    compiled = dln.compile(str(HERE / FILES["transfer"]), model=model)
    return recipe_of(find_train(compiled.program, model), compiled.train_spec)


def train_transfer_torch(log=print) -> dict:
    """The three runs of the transfer example in PyTorch: pretrain (all parameters), fine-tune from its
    backbone with the layers outside `over` frozen (requires_grad=False, so Adam neither keeps state
    for them nor steps them; batch norm still updates its running statistics in train mode), and the
    same fine-tuning from a random backbone."""
    import torch

    from dln.runtime import data

    began, cpu = time.perf_counter(), time.process_time()
    record: dict = {}
    pretrained = None
    for run in ("pretrain", "finetune", "scratch"):
        r = transfer_recipe("pretrain" if run == "pretrain" else "finetune")
        torch.manual_seed(r.seed)
        net = make_transfer_cnn("head04" if run == "pretrain" else "head")
        if run == "finetune":
            net.features.load_state_dict(pretrained)
        if run != "pretrain":
            for name in TRANSFER_FROZEN:
                getattr(net.features, name).requires_grad_(False)
            assert all(o.over is not None and not o.updates(f"features.{name}.weight") for o in r.objectives
                       for name in TRANSFER_FROZEN)
        train, val = split(data.load(r.data, HERE), r.validate, r.seed)
        opt = torch.optim.Adam([p for p in net.parameters() if p.requires_grad], lr=r.objectives[0].optimizer.lr)
        t = {k: torch.from_numpy(v) for k, v in train.items()}
        n = len(train["y"])
        for epoch in range(r.epochs):
            net.train()
            sums: dict[str, float] = {}
            for idx in epoch_batches(n, r.batch, r.seed, epoch):
                values = _losses("cnn", net, t["images"][idx], t["y"][idx])
                opt.zero_grad()
                values["loss"].backward()
                opt.step()
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + v.item() * len(idx)
            net.eval()
            with torch.no_grad():
                vals = _losses("cnn", net, torch.from_numpy(val["images"]), torch.from_numpy(val["y"]))
            last = {"epoch": epoch + 1, **{k: v / n for k, v in sums.items()},
                    **{f"val_{k}": float(v) for k, v in vals.items()}}
            log(json.dumps({"run": run, **{k: round(v, 6) for k, v in last.items()}}))
        record[run] = {k: round(v, 4) for k, v in last.items() if k.startswith("val_")}
        if run == "pretrain":
            pretrained = net.features.state_dict()
    return {**record, "time": time.perf_counter() - began, "cpu": time.process_time() - cpu}


def train_transfer_dln() -> dict:
    """The same three runs through dln.train: the fine-tuning loads the pretrained weights non-strictly."""
    import tempfile

    import dln

    began, cpu = time.perf_counter(), time.process_time()
    path, record = str(HERE / FILES["transfer"]), {}
    with tempfile.TemporaryDirectory() as tmp:
        pre = Path(tmp) / "pre.safetensors"
        for run, weights in (("pretrain", None), ("finetune", pre), ("scratch", None)):
            history = dln.train(path, model="pretrain" if run == "pretrain" else "finetune", weights=weights,
                                strict=weights is None, progress=False, log=lambda s: None)
            if run == "pretrain":
                history.model.save(pre)
            record[run] = {k: round(v, 4) for k, v in history[-1].items() if k.startswith("val_")}
    return {**record, "time": time.perf_counter() - began, "cpu": time.process_time() - cpu}


# ---- the GAN's samples, scored --------------------------------------------------------------------------------
def coverage(samples: np.ndarray) -> dict:
    """What a digits classifier makes of generated samples [N, 1, 8, 8]: classes holding at least 2%
    of them, the effective number of classes exp(H), the classifier's mean confidence."""
    from sklearn.linear_model import LogisticRegression

    d = digits()
    clf = LogisticRegression(max_iter=2000).fit(d["x"], d["y"])
    p = clf.predict_proba(samples.reshape(len(samples), -1))
    share = np.bincount(p.argmax(1), minlength=10) / len(samples)
    nz = share[share > 0]
    return {"classes_2pct": int((share >= 0.02).sum()), "effective_classes": float(np.exp(-(nz * np.log(nz)).sum())),
            "confidence": float(p.max(1).mean())}


def read_settings(name: str):
    """The example's train section as dln reads it (a Recipe)."""
    import dln
    from dln.compiler.recipe import read_recipe
    from dln.runtime.train import find_train

    model = dln.compile(str(HERE / FILES[name]))
    spec = model.train_spec
    return read_recipe(find_train(model.program), model.name, set(spec.values), set(spec.instances))


def settings_of(name: str) -> dict:
    """The train section's settings as dln reads them, to keep SETTINGS honest."""
    r = read_settings(name)
    opt = r.objectives[0].optimizer
    adamw = {"optimizer": "adamw", "weight_decay": opt.hyper.get("weight_decay", 0.01)} if opt.kind == "adamw" else \
        {"weight_decay": opt.hyper["weight_decay"]} if opt.hyper.get("weight_decay") else {}
    warmup = {"warmup": r.schedule.arg("warmup", 0)} if r.schedule is not None else {}
    assert r.schedule is None or r.schedule.kind == "cosine", r.schedule   # the only schedule step_rates knows
    return {"validate": r.validate_renames or r.validate or None, "lr": opt.lr,
            "betas": tuple(opt.hyper.get("betas", (0.9, 0.999))),
            "batch": r.batch, "epochs": r.epochs, "seed": r.seed,
            **({"clip_grad": r.clip_grad} if r.clip_grad is not None else {}), **adamw, **warmup}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("name", choices=[*FILES, "all"])
    ap.add_argument("--dln", action="store_true", help="train the .dln file instead, measured the same way")
    ap.add_argument("--quiet", action="store_true", help="the final record only")
    args = ap.parse_args()
    for name in FILES if args.name == "all" else [args.name]:
        if name == "transfer":
            record = train_transfer_dln() if args.dln else \
                train_transfer_torch(log=(lambda s: None) if args.quiet else print)
        elif args.dln:
            record = train_dln(name)
        else:
            assert settings_of(name) == SETTINGS[name], (settings_of(name), SETTINGS[name])
            record = train_torch(name, log=(lambda s: None) if args.quiet else print)
        print(json.dumps({"example": name, "side": "dln" if args.dln else "torch",
                          **{k: round(v, 4) if isinstance(v, float) else v for k, v in record.items()}}))


if __name__ == "__main__":
    main()
