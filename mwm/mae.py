"""MWM's masked autoencoder: conv stem -> token masking -> ViT encoder -> ViT decoder.

Follows the MAE structure (He et al., 2022) in small named steps (``patchify``,
``unpatchify``, ``encode``, ``decode``, ``loss``) with MWM's changes (Seo et al., 2022):
masking acts on conv-stem feature tokens, the decoder carries an extra reward token,
and the reconstruction target is the standardised pixels of every patch.

Shapes: N frames, H x W x C images, L = (H / p) * (W / p) tokens, K kept tokens,
D encoder width, P = p * p * C pixels per patch.
"""

from collections.abc import Sequence

import torch
from torch import nn

from mwm.losses.representation import LOSS_ON, NORM_PIX_EPS, mae_pixel_loss, mae_reward_loss
from mwm.masking import Masking, gather_tokens, keep_all, restore_tokens
from mwm.stem import ConvStem, PatchEmbed, deprocess, preprocess
from mwm.vit import Transformer, init_weights, sincos_pos_embed_2d

GREY = 128  # fill value of removed patches in figures


class MaskedAutoencoder(nn.Module):
    """Masked autoencoder over 8x8 tokens of a 64x64 frame, with a reward token.

    Defaults are the official MWM values (docs/HYPERPARAMETERS.md). ``simmim=True`` passes
    mask tokens through the encoder (SimMIM) instead of dropping removed tokens (MAE);
    ``stem=False`` embeds raw ``patch`` x ``patch`` pixel patches (the pixel ablation).
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
        simmim: bool = False,
        reward_head: bool = True,
        loss_on: str = "all",
        norm_pix: bool = False,
        reward_scale: float = 1.0,
    ):
        super().__init__()
        if image_size % patch != 0:
            raise ValueError(f"image size {image_size} is not a multiple of the patch size {patch}; change one of them")
        if stem and 2 ** len(stem_channels) != patch:
            raise ValueError(
                f"a conv stem of {len(stem_channels)} stride-2 convs downsamples by {2 ** len(stem_channels)}, "
                f"not the patch size {patch}; use {patch.bit_length() - 1} stem channels or patch {2 ** len(stem_channels)}"
            )
        if loss_on not in LOSS_ON:
            raise ValueError(f"unknown MAE loss_on {loss_on!r}; use 'all' (official MWM) or 'masked' (MAE paper)")
        self.in_channels = in_channels
        self.image_size = image_size
        self.patch = patch
        self.grid = image_size // patch
        self.num_tokens = self.grid * self.grid  # L
        self.simmim = simmim
        self.loss_on = loss_on
        self.norm_pix = norm_pix
        self.reward_scale = reward_scale

        # Encoder.
        self.embed = ConvStem(in_channels, stem_channels, width) if stem else PatchEmbed(in_channels, patch, width)
        self.register_buffer("pos_embed", sincos_pos_embed_2d(width, self.grid, self.grid), persistent=False)
        self.cls_token = nn.Parameter(torch.zeros(width))
        self.enc_mask_token = nn.Parameter(torch.zeros(width)) if simmim else None
        self.encoder = Transformer(width, depth, heads, mlp_ratio)

        # Decoder.
        self.decoder_embed = nn.Linear(width, dec_width)
        self.mask_token = nn.Parameter(torch.zeros(dec_width))
        self.register_buffer("dec_pos_embed", sincos_pos_embed_2d(dec_width, self.grid, self.grid), persistent=False)
        self.reward_pos = nn.Parameter(torch.zeros(dec_width)) if reward_head else None
        self.decoder = Transformer(dec_width, dec_depth, dec_heads, mlp_ratio)
        self.pixel_head = nn.Linear(dec_width, patch * patch * in_channels)
        self.reward_head = nn.Linear(dec_width, 1) if reward_head else None

        self.decoder_embed.apply(init_weights)
        self.pixel_head.apply(init_weights)
        if self.reward_head is not None:
            self.reward_head.apply(init_weights)
        for token in (self.cls_token, self.enc_mask_token, self.mask_token, self.reward_pos):
            if token is not None:
                nn.init.normal_(token, std=0.02)  # as MAE's cls and mask tokens

    # ----------------------------------------------------------------- patches

    def patchify(self, images: torch.Tensor) -> torch.Tensor:
        """(N, C, H, W) -> (N, L, p * p * C), patches row-major, pixels (row, col, channel)."""
        n, c, h, w = images.shape
        p = self.patch
        x = images.reshape(n, c, h // p, p, w // p, p)  # (N, C, h, p, w, p)
        x = x.permute(0, 2, 4, 3, 5, 1)  # (N, h, w, p, p, C)
        return x.reshape(n, (h // p) * (w // p), p * p * c)  # (N, L, P)

    def unpatchify(self, patches: torch.Tensor) -> torch.Tensor:
        """(N, L, p * p * C) -> (N, C, H, W), the inverse of :meth:`patchify`."""
        n = patches.shape[0]
        p, g = self.patch, self.grid
        x = patches.reshape(n, g, g, p, p, -1)  # (N, h, w, p, p, C)
        x = x.permute(0, 5, 1, 3, 2, 4)  # (N, C, h, p, w, p)
        return x.reshape(n, -1, g * p, g * p)  # (N, C, H, W)

    def check_images(self, images: torch.Tensor) -> None:
        """Raise ValueError unless images are (N, image_size, image_size, in_channels)."""
        expected = (self.image_size, self.image_size, self.in_channels)
        if images.dim() != 4 or tuple(images.shape[1:]) != expected:
            raise ValueError(
                f"MAE expects images (N, {', '.join(map(str, expected))}), got {tuple(images.shape)}; "
                "check the env's image size and grayscale setting"
            )
        if images.dtype != torch.uint8:
            raise ValueError(f"MAE expects uint8 images in [0, 255], got {images.dtype}; pass the raw observations")

    def check_masking(self, masking: Masking, n: int) -> None:
        """Raise ValueError unless the masking covers n frames of L tokens."""
        if tuple(masking.mask.shape) != (n, self.num_tokens):
            raise ValueError(
                f"masking is for {tuple(masking.mask.shape)} (frames, tokens) but the batch needs "
                f"({n}, {self.num_tokens}); build it with num_tokens=model.num_tokens for every frame"
            )

    # ----------------------------------------------------------------- encoder

    def encode(self, images: torch.Tensor, masking: Masking | None) -> tuple[torch.Tensor, Masking]:
        """uint8 images (N, H, W, C) -> latents (N, 1 + K, D) and the masking used.

        MAE: only the K kept tokens (plus cls) enter the encoder. SimMIM: removed
        tokens are replaced by a learned mask token and all L (plus cls) enter.
        ``masking=None`` keeps every token in order (what the world model sees).
        """
        self.check_images(images)
        n = images.shape[0]
        if masking is None:
            masking = keep_all(n, self.num_tokens, images.device)
        self.check_masking(masking, n)
        tokens = self.embed(preprocess(images))  # (N, L, D)
        if self.simmim:
            removed = masking.mask[..., None].to(tokens.dtype)  # (N, L, 1)
            tokens = tokens * (1 - removed) + self.enc_mask_token * removed  # (N, L, D)
            tokens = tokens + self.pos_embed  # (N, L, D)
        else:
            tokens = gather_tokens(tokens + self.pos_embed, masking.ids_keep)  # (N, K, D)
        cls = self.cls_token.expand(n, 1, -1)  # (N, 1, D)
        latents = self.encoder(torch.cat([cls, tokens], dim=1))  # (N, 1 + K, D)
        return latents, masking

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Unmasked latents (N, 1 + L, D) for the world model; the caller stops gradients."""
        return self.encode(images, None)[0]

    # ----------------------------------------------------------------- decoder

    def decode(self, latents: torch.Tensor, masking: Masking) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Latents (N, 1 + K, D) -> predicted patches (N, L, P) and reward (N,) (None
        without a reward head).

        Removed slots are filled with the mask token and put back in order; the reward
        token is the mask token plus its own learned position embedding, appended last.
        """
        n = latents.shape[0]
        x = self.decoder_embed(latents)  # (N, 1 + K, Dd)
        cls, tokens = x[:, :1], x[:, 1:]  # (N, 1, Dd), (N, K, Dd)
        if not self.simmim:
            tokens = restore_tokens(tokens, self.mask_token, masking.ids_restore)  # (N, L, Dd)
        parts = [cls, tokens + self.dec_pos_embed]  # cls has no position, as MAE's zero row
        if self.reward_pos is not None:
            parts.append((self.mask_token + self.reward_pos).expand(n, 1, -1))  # (N, 1, Dd)
        x = self.decoder(torch.cat(parts, dim=1))  # (N, 1 + L [+ 1], Dd)
        pixels = self.pixel_head(x[:, 1 : 1 + self.num_tokens])  # (N, L, P)
        reward = self.reward_head(x[:, -1]).squeeze(-1) if self.reward_head is not None else None  # (N,)
        return pixels, reward

    # ----------------------------------------------------------------- loss

    def loss(
        self, images: torch.Tensor, rewards: torch.Tensor | None, masking: Masking | None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Mean over frames of pixel loss + reward_scale * reward loss.

        Args:
            images: uint8 (N, H, W, C).
            rewards: (N,) rewards of those frames (ignored without a reward head).
            masking: which tokens to keep; None keeps all.
        Returns:
            The scalar loss and detached metrics ``mae/pixel_loss``, ``mae/reward_loss``,
            ``mae/loss``.
        """
        latents, masking = self.encode(images, masking)
        pred_pixels, pred_reward = self.decode(latents, masking)
        target = self.patchify(preprocess(images))  # (N, L, P)
        pixel_loss = mae_pixel_loss(pred_pixels, target, masking.mask, self.loss_on, self.norm_pix)  # (N,)
        return self.add_reward_loss(pixel_loss, pred_reward, rewards, "mae")

    def add_reward_loss(self, pixel_loss: torch.Tensor, pred_reward: torch.Tensor | None,
                        rewards: torch.Tensor | None, prefix: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Per-frame pixel loss (N,) + reward_scale * reward loss, averaged over frames,
        with detached metrics ``<prefix>/pixel_loss``, ``<prefix>/reward_loss``, ``<prefix>/loss``."""
        if pred_reward is None:
            reward_loss = torch.zeros_like(pixel_loss)
        else:
            if rewards is None:
                raise ValueError(f"{type(self).__name__} needs rewards (N,) for its loss when the reward head is on")
            reward_loss = mae_reward_loss(pred_reward, rewards)  # (N,)
        loss = (pixel_loss + self.reward_scale * reward_loss).mean()
        metrics = {
            f"{prefix}/pixel_loss": pixel_loss.mean().detach(),
            f"{prefix}/reward_loss": reward_loss.mean().detach(),
            f"{prefix}/loss": loss.detach(),
        }
        return loss, metrics

    # ----------------------------------------------------------------- figures

    @torch.no_grad()
    def reconstruct(self, images: torch.Tensor, masking: Masking | None) -> dict[str, torch.Tensor]:
        """uint8 figures (N, H, W, C) as in the MAE paper: ``input``, ``masked`` (removed
        patches grey), ``reconstruction`` and ``pasted`` (reconstruction with the visible
        patches pasted back)."""
        latents, masking = self.encode(images, masking)
        pred, _ = self.decode(latents, masking)  # (N, L, P)
        target = self.patchify(preprocess(images))  # (N, L, P)
        if self.norm_pix:  # predictions are per-patch standardised: undo with the target's statistics
            mean = target.mean(dim=-1, keepdim=True)  # (N, L, 1)
            std = (target.var(dim=-1, keepdim=True) + NORM_PIX_EPS) ** 0.5  # (N, L, 1)
            pred = pred * std + mean
        reconstruction = deprocess(self.unpatchify(pred))  # (N, H, W, C)
        patch_mask = masking.mask[..., None].expand_as(pred)  # (N, L, P)
        removed = self.unpatchify(patch_mask).movedim(1, -1) > 0  # (N, H, W, C)
        grey = torch.full_like(images, GREY)
        return {
            "input": images.to(torch.uint8),
            "masked": torch.where(removed, grey, images),
            "reconstruction": reconstruction,
            "pasted": torch.where(removed, reconstruction, images),
        }
