"""Siamese masked autoencoder (SiamMAE, Gupta et al., 2023) on MWM's conv-stem tokens.

Two frames of one episode, t (past) and t + k (future), go through one shared encoder:
the past frame unmasked, the future frame with 95% of its tokens removed. The decoder
fills the future frame's removed slots with mask tokens and alternates, in every
block, cross-attention (future queries, past keys and values), self-attention over the
future tokens, and an MLP (the paper's "cross-self" decoder). The loss is on the future
frame's pixels only.

Everything else is MWM's :class:`mwm.mae.MaskedAutoencoder`, which this class extends:
the conv stem (masking acts on CNN feature cells), the fixed 2-D sin-cos position
embeddings (no temporal embedding, as in the paper), the cls token, the encoder,
``patchify`` / ``unpatchify``, the optional reward token and ``features`` (the
unmasked latents the world model reads).

Shapes: N frame pairs, H x W x C images, L tokens per frame, K kept future tokens,
D encoder width, Dd decoder width, P = p * p * C pixels per patch.
"""

from collections.abc import Mapping, Sequence
from typing import NamedTuple

import torch
from torch import nn

from mwm.losses.representation import NORM_PIX_EPS
from mwm.losses.siamese import future_frame_loss
from mwm.mae import GREY, MaskedAutoencoder
from mwm.masking import Masking, num_kept, random_masking, restore_tokens
from mwm.stem import deprocess, preprocess
from mwm.vit import CrossBlock


class FramePairs(NamedTuple):
    """Frame pairs (t, t + k) cut from replay sequences."""

    past: torch.Tensor  # (N, H, W, C) uint8, frame t
    future: torch.Tensor  # (N, H, W, C) uint8, frame t + k
    future_reward: torch.Tensor  # (N,) reward received on entering frame t + k
    gap: torch.Tensor  # (N,) long, k


def check_gaps(gap_min: int, gap_max: int) -> None:
    """Raise ValueError unless 1 <= gap_min <= gap_max."""
    if not 1 <= gap_min <= gap_max:
        raise ValueError(
            f"SiamMAE frame gap range [{gap_min}, {gap_max}] is empty or starts below 1; "
            "set 1 <= siammae.gap_min <= siammae.gap_max (e.g. 1 and 3 agent steps)"
        )


def frame_pairs(
    sequences: Mapping[str, torch.Tensor],
    gap_min: int,
    gap_max: int,
    generator: torch.Generator | None = None,
) -> FramePairs:
    """One pair per sequence: frame 0 and frame k, with k uniform in [gap_min, gap_max].

    ``sequences`` holds ``image`` (B, T, H, W, C) and ``reward`` (B, T) with
    T >= gap_max + 1, windows inside one episode (as :meth:`replay.Replay.sample`
    returns them), so no pair crosses an episode boundary. k is drawn per sequence.
    """
    check_gaps(gap_min, gap_max)
    images = sequences["image"]  # (B, T, H, W, C)
    batch, steps = images.shape[:2]
    if steps < gap_max + 1:
        raise ValueError(f"sequences of {steps} steps cannot hold a frame gap of {gap_max}; sample {gap_max + 1}")
    device = images.device
    gap = torch.randint(gap_min, gap_max + 1, (batch,), device=device, generator=generator)  # (B,)
    rows = torch.arange(batch, device=device)
    return FramePairs(images[:, 0], images[rows, gap], sequences["reward"][rows, gap], gap)


class CrossSelfDecoder(nn.Module):
    """SiamMAE's decoder: ``depth`` :class:`mwm.vit.CrossBlock` s, then a LayerNorm.

    Every block cross-attends from the future-frame tokens ``x`` (queries) to the same
    past-frame tokens ``context`` (keys and values), then self-attends over ``x``.
    """

    def __init__(self, dim: int, depth: int, heads: int, mlp_ratio: float = 4.0, eps: float = 1e-6):
        super().__init__()
        if depth < 1:
            raise ValueError(f"SiamMAE decoder depth {depth} must be at least 1; set siammae.dec_depth")
        self.blocks = nn.ModuleList(CrossBlock(dim, heads, mlp_ratio, eps) for _ in range(depth))
        self.norm = nn.LayerNorm(dim, eps=eps)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> torch.Tensor:
        """x (N, Q, Dd), context (N, M, Dd) -> (N, Q, Dd)."""
        for block in self.blocks:
            x = block(x, context)
        return self.norm(x)


class SiameseMaskedAutoencoder(MaskedAutoencoder):
    """SiamMAE over the 8x8 conv-stem tokens of 64x64 frame pairs, with a reward token.

    Encoder arguments are :class:`mwm.mae.MaskedAutoencoder`'s (MWM values by default);
    ``dec_*`` size the cross-self decoder; ``mask_ratio`` is the future frame's (0.95
    in the paper; the past frame is never masked). The reward token, when on, predicts
    the reward received on entering the future frame.

    The inherited single-frame methods (``decode`` without ``context``, ``loss``,
    ``reconstruct``) use the frame itself as its own context; the world model's
    figures decode predicted tokens this way. Training uses :meth:`pair_loss`.
    """

    def __init__(
        self,
        in_channels: int,
        image_size: int = 64,
        stem: bool = True,
        stem_channels: Sequence[int] = (32, 64, 128),
        patch: int = 8,
        width: int = 256,
        depth: int = 4,
        heads: int = 4,
        mlp_ratio: float = 4.0,
        dec_width: int = 256,
        dec_depth: int = 3,
        dec_heads: int = 4,
        mask_ratio: float = 0.95,
        reward_head: bool = True,
        loss_on: str = "all",
        norm_pix: bool = False,
        reward_scale: float = 1.0,
    ):
        # The parent's self-attention decoder is replaced below, so it is built empty.
        super().__init__(
            in_channels, image_size, stem, stem_channels, patch, width, depth, heads, mlp_ratio,
            dec_width=dec_width, dec_depth=0, dec_heads=dec_heads, simmim=False, reward_head=reward_head,
            loss_on=loss_on, norm_pix=norm_pix, reward_scale=reward_scale,
        )
        self.decoder = CrossSelfDecoder(dec_width, dec_depth, dec_heads, mlp_ratio)
        self.mask_ratio = mask_ratio
        self.future_kept = num_kept(self.num_tokens, mask_ratio)  # K; raises ValueError on a bad ratio

    # ----------------------------------------------------------------- masking

    def mask_future(self, n: int, device: torch.device | str, generator: torch.Generator | None = None) -> Masking:
        """Random masking of n future frames at ``mask_ratio``: K = floor(L * (1 - ratio)) kept."""
        return random_masking(n, self.num_tokens, self.mask_ratio, device, generator)

    # ----------------------------------------------------------------- decoder

    def embed_context(self, context: torch.Tensor) -> torch.Tensor:
        """Unmasked past-frame latents (N, 1 + L, D) -> decoder keys/values (N, 1 + L, Dd)."""
        if context.shape[1] != 1 + self.num_tokens:
            raise ValueError(
                f"SiamMAE context must be an unmasked frame's latents (N, {1 + self.num_tokens}, D), "
                f"got {tuple(context.shape)}"
            )
        x = self.decoder_embed(context)  # (N, 1 + L, Dd)
        return torch.cat([x[:, :1], x[:, 1:] + self.dec_pos_embed], dim=1)  # cls has no position

    def decode(
        self, latents: torch.Tensor, masking: Masking, context: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Future latents (N, 1 + K, D) -> predicted patches (N, L, P) and reward (N,) (None
        without a reward head).

        Queries: the future frame's cls and L tokens, mask tokens in the removed slots,
        order restored, plus the reward token. Keys and values: ``context``, the past
        frame's unmasked latents (N, 1 + L, D); None uses the future frame's own decoder
        tokens (mask tokens included) as its context.
        """
        n = latents.shape[0]
        x = self.decoder_embed(latents)  # (N, 1 + K, Dd)
        tokens = restore_tokens(x[:, 1:], self.mask_token, masking.ids_restore) + self.dec_pos_embed  # (N, L, Dd)
        own = torch.cat([x[:, :1], tokens], dim=1)  # (N, 1 + L, Dd)
        keys = own if context is None else self.embed_context(context)  # (N, 1 + L, Dd)
        parts = [own]
        if self.reward_pos is not None:
            parts.append((self.mask_token + self.reward_pos).expand(n, 1, -1))  # (N, 1, Dd)
        x = self.decoder(torch.cat(parts, dim=1), keys)  # (N, 1 + L [+ 1], Dd)
        pixels = self.pixel_head(x[:, 1 : 1 + self.num_tokens])  # (N, L, P)
        reward = self.reward_head(x[:, -1]).squeeze(-1) if self.reward_head is not None else None  # (N,)
        return pixels, reward

    # ----------------------------------------------------------------- pairs

    def predict_future(
        self, past: torch.Tensor, future: torch.Tensor, masking: Masking
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """uint8 past and future frames (N, H, W, C) -> future patches (N, L, P) and reward (N,).

        One shared encoder: the past frame with every token, the future frame with the
        K tokens ``masking`` keeps.
        """
        past_latents, _ = self.encode(past, None)  # (N, 1 + L, D)
        future_latents, masking = self.encode(future, masking)  # (N, 1 + K, D)
        return self.decode(future_latents, masking, past_latents)

    def pair_loss(
        self,
        past: torch.Tensor,
        future: torch.Tensor,
        future_reward: torch.Tensor | None,
        masking: Masking | None = None,
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean over pairs of future pixel loss + reward_scale * future reward loss.

        Args:
            past, future: uint8 (N, H, W, C) frames t and t + k.
            future_reward: (N,) reward received on entering frame t + k (ignored without
                a reward head).
            masking: the future frame's masking; None draws :meth:`mask_future`.
        Returns:
            The scalar loss and detached metrics ``siammae/pixel_loss``,
            ``siammae/reward_loss``, ``siammae/loss``.
        """
        if masking is None:
            masking = self.mask_future(future.shape[0], future.device)
        pred_pixels, pred_reward = self.predict_future(past, future, masking)
        target = self.patchify(preprocess(future))  # (N, L, P)
        pixel_loss = future_frame_loss(pred_pixels, target, masking.mask, self.loss_on, self.norm_pix)  # (N,)
        return self.add_reward_loss(pixel_loss, pred_reward, future_reward, "siammae")

    # ----------------------------------------------------------------- figures

    @torch.no_grad()
    def reconstruct_pair(
        self, past: torch.Tensor, future: torch.Tensor, masking: Masking | None = None
    ) -> dict[str, torch.Tensor]:
        """uint8 figures (N, H, W, C): ``past``, ``future``, ``masked`` (the future frame's
        removed patches grey), ``reconstruction`` of the future frame and ``pasted``
        (the reconstruction with the future frame's visible patches pasted back)."""
        if masking is None:
            masking = self.mask_future(future.shape[0], future.device)
        pred, _ = self.predict_future(past, future, masking)  # (N, L, P)
        if self.norm_pix:  # predictions are per-patch standardised: undo with the target's statistics
            target = self.patchify(preprocess(future))  # (N, L, P)
            mean = target.mean(dim=-1, keepdim=True)  # (N, L, 1)
            std = (target.var(dim=-1, keepdim=True) + NORM_PIX_EPS) ** 0.5  # (N, L, 1)
            pred = pred * std + mean
        reconstruction = deprocess(self.unpatchify(pred))  # (N, H, W, C)
        patch_mask = masking.mask[..., None].expand_as(pred)  # (N, L, P)
        removed = self.unpatchify(patch_mask).movedim(1, -1) > 0  # (N, H, W, C)
        return {
            "past": past.to(torch.uint8),
            "future": future.to(torch.uint8),
            "masked": torch.where(removed, torch.full_like(future, GREY), future),
            "reconstruction": reconstruction,
            "pasted": torch.where(removed, reconstruction, future),
        }
