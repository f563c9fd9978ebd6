"""InfoGAN's latent codes (Chen et al. 2016, "InfoGAN: Interpretable Representation Learning by Information
Maximizing Generative Adversarial Nets", section 4): G reads c beside the noise z, and D's Q head predicts c
from G(z, c). The codes are part of G's latent input: G's z is [noise, codes], the codes in its last
`dim` columns, so every caller of G (the trainer's slots, the evaluator's sampler, G_ema) passes them the
way it passes z. A G built with codes declares them (`GeneratorRole.codes`); the draws come after z and
the labels from the same generator, so a run without codes draws exactly what it drew before. BigGAN's
truncation bounds the noise only.

Categorical code i: one of K_i values, uniform (H(c_i) = ln K_i), one-hot in G's input. Continuous code
j: Uniform(-1, 1) (the paper's MNIST codes; H = ln 2), as is. D's Q head outputs, in order, K_i logits per
categorical code, then one mean per continuous code, then (`learn_std`) one log-variance per continuous
code: the factored Gaussian of the paper's section 6. Without `learn_std` the standard deviation is fixed
at 1, as openai/InfoGAN's MNIST run (`Uniform(1, fix_std=True)`).

Names, for fixing a code when sampling (`bigtrain sample --code cat0=3 --code cont1=0.5`): cat0, cat1, ...
then cont0, cont1, ...
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass(frozen=True)
class LatentCodes:
    categorical: tuple[int, ...] = ()  # K of each categorical code
    continuous: int = 0  # the number of continuous codes
    learn_std: bool = False  # Q's Gaussian has a learned standard deviation (else 1)

    @property
    def dim(self) -> int:
        """The columns the codes take at the end of G's z."""
        return sum(self.categorical) + self.continuous

    @property
    def q_outputs(self) -> int:
        """The width of D's Q head."""
        return sum(self.categorical) + self.continuous * (2 if self.learn_std else 1)

    @property
    def names(self) -> list[str]:
        return [f"cat{i}" for i in range(len(self.categorical))] + [
            f"cont{j}" for j in range(self.continuous)
        ]

    def draw(
        self, n: int, generator: torch.Generator, device: torch.device | str,
        fixed: dict[str, list[float]] | None = None,
    ) -> torch.Tensor:  # fmt: skip
        """(n, dim) codes from `generator`: each categorical index uniform, one-hot; each continuous value
        in U(-1, 1). `fixed`: name -> values taken in turn by the n samples (`--code`), drawn first all the
        same, so fixing one code leaves the others (and the noise after) as they were."""
        indices = [torch.randint(0, k, (n,), generator=generator, device=device) for k in self.categorical]
        values = torch.rand(n, self.continuous, generator=generator, device=device) * 2 - 1
        for name, chosen in (fixed or {}).items():
            kind, i = self._find(name)
            column = torch.tensor(chosen, device=device).repeat((n + len(chosen) - 1) // len(chosen))[:n]
            if kind == "cat":
                indices[i] = column.long()
            else:
                values[:, i] = column.to(values.dtype)
        onehots = [F.one_hot(idx, k).to(values.dtype) for idx, k in zip(indices, self.categorical)]
        return torch.cat([*onehots, values], dim=1)

    def split(self, z: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor]:
        """G's z (B, noise + dim) -> (the index (B,) of each categorical code, the continuous (B, continuous))."""
        codes = z[:, z.shape[1] - self.dim :]
        onehots = codes[:, : sum(self.categorical)].split(list(self.categorical), dim=1)
        return [o.argmax(dim=1) for o in onehots], codes[:, sum(self.categorical) :]

    def split_q(self, q: torch.Tensor) -> tuple[list[torch.Tensor], torch.Tensor, torch.Tensor | None]:
        """Q's outputs (B, q_outputs) -> (logits (B, K_i) per categorical code, means (B, continuous),
        log-variances (B, continuous) or None with the standard deviation fixed at 1)."""
        cat = sum(self.categorical)
        logits = list(q[:, :cat].split(list(self.categorical), dim=1)) if self.categorical else []
        means = q[:, cat : cat + self.continuous]
        log_var = q[:, cat + self.continuous :] if self.learn_std else None
        return logits, means, log_var

    def _find(self, name: str) -> tuple[str, int]:
        if name not in self.names:
            raise ValueError(f"no latent code {name!r}: this generator's codes are {', '.join(self.names)}")
        kind = "cat" if name.startswith("cat") else "cont"
        return kind, int(name[len(kind) :])

    def parse(self, texts: list[str]) -> dict[str, list[float]]:
        """['cat0=3', 'cont1=-1,0,1'] -> {'cat0': [3.0], 'cont1': [-1.0, 0.0, 1.0]}: each code's value, or
        values the samples take in turn; categorical indices checked against K."""
        fixed: dict[str, list[float]] = {}
        for text in texts:
            name, sep, raw = text.partition("=")
            name = name.strip()
            if not sep:
                raise ValueError(f"--code {text!r} must look like NAME=VALUE, e.g. cat0=3 or cont0=-1,0,1")
            kind, i = self._find(name)
            try:
                values = [float(v) for v in raw.split(",") if v.strip()]
            except ValueError:
                raise ValueError(
                    f"--code {text!r}: {raw!r} is not a number or comma-separated numbers"
                ) from None
            if not values:
                raise ValueError(f"--code {text!r} gives no value")
            if kind == "cat":
                k = self.categorical[i]
                bad = [v for v in values if not v.is_integer() or not 0 <= v < k]
                if bad:
                    raise ValueError(f"--code {text!r}: {name} is one of 0..{k - 1}, not {bad}")
            fixed[name] = values
        return fixed


def code_dim(codes: LatentCodes | None) -> int:
    """The columns G's z gains for the codes (0 without)."""
    return codes.dim if codes is not None else 0


def q_outputs(codes: LatentCodes | None) -> int:
    """The width of D's Q head (0: none)."""
    return codes.q_outputs if codes is not None else 0
