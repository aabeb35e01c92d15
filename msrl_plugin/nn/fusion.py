"""Multimodal reference modules: late fusion (PORPOISE MMF) and generated-genomics heads (G-HANet, LD-CVAE).

Pure torch; method.md §9.2, §9.3, §9.5 and §9.6. Provenance: [B] baseline repositories, [D] our default.
"""
from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .abmil import GatedAttentionPool, init_xavier
from .snn import SNN

FUSIONS = ("concat", "bilinear")


class ConcatFusion(nn.Module):
    """``[v1; v2]`` ``(B, d1 + d2)`` -> Linear 256, ReLU -> Linear 256, ReLU ``(B, out_dim)`` [B PORPOISE]."""

    def __init__(self, dim1: int, dim2: int, out_dim: int = 256):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(dim1 + dim2, out_dim), nn.ReLU(),
                                 nn.Linear(out_dim, out_dim), nn.ReLU())
        self.out_dim = out_dim
        init_xavier(self)

    def forward(self, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        return self.net(torch.cat([v1, v2], dim=1))


class GatedBilinearFusion(nn.Module):
    """Gated Kronecker fusion (Pathomic Fusion / PORPOISE ``BilinearFusion``, gates on, skip on) [B].

    Per modality i (other modality j): ``h_i = ReLU(W_h v_i)``, ``z_i = W_z [v1; v2]``,
    ``o_i = Dropout(ReLU(W_o (sigmoid(z_i) * h_i)))`` with widths ``d_i // scale`` (256 / 8 = 32). A
    constant 1 is appended to each ``o_i`` so the outer product keeps the unimodal terms:
    ``(33 * 33) = 1089`` -> dropout -> Linear 256 + ReLU; skip-concat ``[out, v1, v2]`` -> Linear
    ``out_dim`` + ReLU.

    Shapes: ``v1 (B, d1), v2 (B, d2) -> (B, out_dim)``.
    """

    def __init__(self, dim1: int, dim2: int, scale: int = 8, out_dim: int = 256, dropout: float = 0.25):
        super().__init__()
        s1, s2 = max(1, dim1 // scale), max(1, dim2 // scale)
        self.gate1 = _GatedUnit(dim1, dim1 + dim2, s1, dropout)
        self.gate2 = _GatedUnit(dim2, dim1 + dim2, s2, dropout)
        self.post_dropout = nn.Dropout(dropout)
        self.encoder1 = nn.Sequential(nn.Linear((s1 + 1) * (s2 + 1), 256), nn.ReLU(), nn.Dropout(dropout))
        self.encoder2 = nn.Sequential(nn.Linear(256 + dim1 + dim2, out_dim), nn.ReLU(), nn.Dropout(dropout))
        self.out_dim = out_dim
        init_xavier(self)

    def forward(self, v1: torch.Tensor, v2: torch.Tensor) -> torch.Tensor:
        both = torch.cat([v1, v2], dim=1)
        ones = v1.new_ones(v1.shape[0], 1)
        o1 = torch.cat([self.gate1(v1, both), ones], dim=1)
        o2 = torch.cat([self.gate2(v2, both), ones], dim=1)
        kron = torch.bmm(o1.unsqueeze(2), o2.unsqueeze(1)).flatten(start_dim=1)
        out = self.encoder1(self.post_dropout(kron))
        return self.encoder2(torch.cat([out, v1, v2], dim=1))


class _GatedUnit(nn.Module):
    def __init__(self, in_dim: int, both_dim: int, out_dim: int, dropout: float):
        super().__init__()
        self.linear_h = nn.Sequential(nn.Linear(in_dim, out_dim), nn.ReLU())
        self.linear_z = nn.Linear(both_dim, out_dim)
        self.linear_o = nn.Sequential(nn.Linear(out_dim, out_dim), nn.ReLU(), nn.Dropout(dropout))

    def forward(self, v: torch.Tensor, both: torch.Tensor) -> torch.Tensor:
        return self.linear_o(torch.sigmoid(self.linear_z(both)) * self.linear_h(v))


def make_fusion(kind: str, dim1: int, dim2: int, out_dim: int = 256, dropout: float = 0.25) -> nn.Module:
    if kind == "concat":
        return ConcatFusion(dim1, dim2, out_dim)
    if kind == "bilinear":
        return GatedBilinearFusion(dim1, dim2, 8, out_dim, dropout)
    raise ValueError(f"fusion must be one of {FUSIONS}, got {kind!r}")


class WSIEncoder(nn.Module):
    """PORPOISE's path branch: ``GatedAttentionPool`` (D -> 512, attention 256) + rho 512 -> 256 [B].

    Shapes: ``x (B, N, D), mask (B, N) -> (B, rho_dim)``.
    """

    def __init__(self, in_dim: int, hidden_dim: int = 512, attn_dim: int = 256, rho_dim: int = 256,
                 dropout: float = 0.25):
        super().__init__()
        self.pool = GatedAttentionPool(in_dim, hidden_dim, attn_dim, dropout)
        self.rho = nn.Sequential(nn.Linear(hidden_dim, rho_dim), nn.ReLU(), nn.Dropout(dropout))
        self.out_dim = rho_dim
        init_xavier(self.rho)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.rho(self.pool(x, mask)[0])


class FusionHead(nn.Module):
    """``(h_path (B, P), genomics (B, G)) -> logits (B, n_outputs)``: SNN gene encoder, fusion, classifier.

    The SNN is PORPOISE 'small' (two blocks of ``omic_dim``, ELU, AlphaDropout 0.25) [B].
    """

    def __init__(self, path_dim: int, genomics_dim: int, n_outputs: int, fusion: str = "concat",
                 omic_dim: int = 256, n_omic_blocks: int = 2, dropout: float = 0.25, activation: str = "elu"):
        super().__init__()
        self.omic = SNN(genomics_dim, [omic_dim] * n_omic_blocks, dropout, activation)
        self.fuse = make_fusion(fusion, path_dim, omic_dim, 256, dropout)
        self.classifier = nn.Linear(self.fuse.out_dim, n_outputs)
        init_xavier(self.classifier)

    def forward(self, h_path: torch.Tensor, genomics: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.fuse(h_path, self.omic(genomics)))


class GenomicsDecoder(nn.Module):
    """WSI representation -> predicted (standardised) genomics; G-HANet's per-family head as one MLP [B].

    Linear -> LayerNorm -> ELU -> Dropout -> Linear. Shapes: ``(B, in_dim) -> (B, out_dim)``.
    """

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 256, dropout: float = 0.25):
        super().__init__()
        self.net = nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.LayerNorm(hidden_dim), nn.ELU(),
                                 nn.Dropout(dropout), nn.Linear(hidden_dim, out_dim))
        init_xavier(self)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return self.net(h)


class ConditionalVAE(nn.Module):
    """Genomics g given the WSI representation h: prior p(z|h), posterior q(z|h,g), decoder p(g|z,h).

    Gaussian latents (``mu``, ``logvar``) of ``latent_dim`` [D: a single latent instead of LD-CVAE's six
    function-specific ones]. Shapes: ``h (B, H)``, ``g (B, G)``, ``z (B, latent_dim)``.
    """

    def __init__(self, cond_dim: int, genomics_dim: int, latent_dim: int = 64, hidden_dim: int = 256,
                 dropout: float = 0.25):
        super().__init__()
        self.prior_net = _gaussian_mlp(cond_dim, hidden_dim, latent_dim, dropout)
        self.posterior_net = _gaussian_mlp(cond_dim + genomics_dim, hidden_dim, latent_dim, dropout)
        self.decoder = GenomicsDecoder(latent_dim + cond_dim, genomics_dim, hidden_dim, dropout)
        self.latent_dim = latent_dim
        init_xavier(self)

    def prior(self, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, logvar)`` of p(z|h), each ``(B, latent_dim)``."""
        return _split(self.prior_net(h))

    def posterior(self, h: torch.Tensor, g: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(mu, logvar)`` of q(z|h,g), each ``(B, latent_dim)``."""
        return _split(self.posterior_net(torch.cat([h, g], dim=1)))

    def decode(self, z: torch.Tensor, h: torch.Tensor) -> torch.Tensor:
        return self.decoder(torch.cat([z, h], dim=1))


def _gaussian_mlp(in_dim: int, hidden_dim: int, latent_dim: int, dropout: float) -> nn.Module:
    # ELU hidden layer as LD-CVAE's latent generators; output = [mu, logvar]
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.ELU(), nn.Dropout(dropout),
                         nn.Linear(hidden_dim, 2 * latent_dim))


def _split(out: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    mu, logvar = out.chunk(2, dim=1)
    return mu, logvar.clamp(-8.0, 8.0)  # keeps exp(logvar) finite early in training


def reparameterise(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    return mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)


def gaussian_kl(mu_q: torch.Tensor, logvar_q: torch.Tensor, mu_p: torch.Tensor,
                logvar_p: torch.Tensor) -> torch.Tensor:
    """KL(N(mu_q, var_q) || N(mu_p, var_p)) summed over the latent dims: ``(B, Z) -> (B,)``."""
    kl = 0.5 * (logvar_p - logvar_q + (logvar_q.exp() + (mu_q - mu_p) ** 2) / logvar_p.exp() - 1.0)
    return kl.sum(dim=1)


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor,
                        cosine_exponent: float = 3.0) -> torch.Tensor:
    """G-HANet's genomics reconstruction error: MSE + scaled cosine error ``mean((1 - cos)^exponent)`` [B].

    Shapes: ``(B, G), (B, G) -> ()``; an empty batch gives 0.
    """
    if pred.shape[0] == 0:
        return pred.sum() * 0.0
    cosine = F.cosine_similarity(pred, target, dim=1, eps=1e-8)
    # clamp: rounding can push cos above 1, and a negative base has no real fractional power
    return F.mse_loss(pred, target) + (1.0 - cosine).clamp_min(0.0).pow(cosine_exponent).mean()


# -- whole networks of the registered references ------------------------------------------------------------
class LateFusionNetwork(nn.Module):
    """PORPOISE MMF: ``(x (B, N, D), mask (B, N), genomics (B, G)) -> logits (B, n_outputs)`` [B]."""

    def __init__(self, feature_dim: int, genomics_dim: int, n_outputs: int, fusion: str = "concat",
                 hidden_dim: int = 512, attn_dim: int = 256, omic_dim: int = 256, n_omic_blocks: int = 2,
                 dropout: float = 0.25, activation: str = "elu"):
        super().__init__()
        self.wsi = WSIEncoder(feature_dim, hidden_dim, attn_dim, 256, dropout)
        self.head = FusionHead(self.wsi.out_dim, genomics_dim, n_outputs, fusion, omic_dim, n_omic_blocks,
                               dropout, activation)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None, genomics: torch.Tensor) -> torch.Tensor:
        return self.head(self.wsi(x, mask), genomics)


class ReconFusionNetwork(nn.Module):
    """WSI only: ``x -> h -> predicted genomics g^ -> FusionHead(h, g^)``; returns ``(logits, g^ (B, G))``."""

    def __init__(self, feature_dim: int, genomics_dim: int, n_outputs: int, fusion: str = "concat",
                 hidden_dim: int = 512, attn_dim: int = 256, omic_dim: int = 256, n_omic_blocks: int = 2,
                 decoder_dim: int = 256, dropout: float = 0.25, activation: str = "elu"):
        super().__init__()
        self.wsi = WSIEncoder(feature_dim, hidden_dim, attn_dim, 256, dropout)
        self.decoder = GenomicsDecoder(self.wsi.out_dim, genomics_dim, decoder_dim, dropout)
        self.head = FusionHead(self.wsi.out_dim, genomics_dim, n_outputs, fusion, omic_dim, n_omic_blocks,
                               dropout, activation)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.wsi(x, mask)
        generated = self.decoder(h)
        return self.head(h, generated), generated


class CVAEFusionNetwork(nn.Module):
    """``x -> h``; genomics generated by a :class:`ConditionalVAE`; ``FusionHead(h, g^)``.

    Training (``.train()``): z ~ q(z|h,g) for cases with genomics (``has`` True), z ~ p(z|h) otherwise.
    Evaluation: z = mean of p(z|h), so predictions are deterministic and read the WSI only.
    Returns ``(logits (B, n_outputs), g^ (B, G), KL(q || p) (B,), zero where no genomics)``.
    """

    def __init__(self, feature_dim: int, genomics_dim: int, n_outputs: int, fusion: str = "concat",
                 hidden_dim: int = 512, attn_dim: int = 256, omic_dim: int = 256, n_omic_blocks: int = 2,
                 latent_dim: int = 64, decoder_dim: int = 256, dropout: float = 0.25,
                 activation: str = "elu"):
        super().__init__()
        self.wsi = WSIEncoder(feature_dim, hidden_dim, attn_dim, 256, dropout)
        self.cvae = ConditionalVAE(self.wsi.out_dim, genomics_dim, latent_dim, decoder_dim, dropout)
        self.head = FusionHead(self.wsi.out_dim, genomics_dim, n_outputs, fusion, omic_dim, n_omic_blocks,
                               dropout, activation)

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None, genomics: torch.Tensor | None = None,
                has_genomics: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = self.wsi(x, mask)
        mu_p, logvar_p = self.cvae.prior(h)
        kl = h.new_zeros(h.shape[0])
        if not self.training:
            z = mu_p
        else:
            z = reparameterise(mu_p, logvar_p)
            if genomics is not None and has_genomics is not None and bool(has_genomics.any()):
                mu_q, logvar_q = self.cvae.posterior(h, genomics)
                z = torch.where(has_genomics[:, None], reparameterise(mu_q, logvar_q), z)
                kl = torch.where(has_genomics, gaussian_kl(mu_q, logvar_q, mu_p, logvar_p), kl)
        generated = self.cvae.decode(z, h)
        return self.head(h, generated), generated, kl
