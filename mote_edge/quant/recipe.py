"""The quantization recipe: which storage scheme each tensor role gets.

Defaults for `--bits B` (DESIGN.md section 4):
    ternary_expert          ternary (1.6 bpw), always
    embed, lm_head          int8 groups (the output head and the table are sensitive)
    attn, ffn, shared_expert, fp_expert, residual_mlp   int-B groups (B = 16 -> fp16)
    router, norm, attn_bias, residual_coef              fp32 (tiny, and routing must not flip)
    vision                  int8 per-channel ONNX (fp16 with --vision-bits 16)
`--bits 16` stores every int-N role as fp16 (embed and lm_head too): the parity configuration.
Overrides: `--recipe embed=4,attn=8g64,router=16` (bits, optional g<group size>).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from mote_edge.errors import ExportError

from .intn import BITS as INTN_BITS
from .intn import GROUP_SIZES

QUANTIZABLE_ROLES = ("embed", "lm_head", "attn", "ffn", "shared_expert", "fp_expert", "residual_mlp")
FLOAT_ONLY_ROLES = ("router", "norm", "attn_bias", "residual_coef")
RECIPE_ROLES = QUANTIZABLE_ROLES + FLOAT_ONLY_ROLES + ("vision",)
METHODS = ("rtn", "gptq")


@dataclass(frozen=True)
class Scheme:
    """How one tensor is stored: kind f32 | f16 | intn | ternary."""

    kind: str
    bits: int | None = None
    group_size: int | None = None
    method: str | None = None  # rtn | gptq for intn

    @property
    def label(self) -> str:
        if self.kind == "intn":
            return f"int{self.bits} g{self.group_size} {self.method}"
        return {"f32": "fp32", "f16": "fp16", "ternary": "ternary 1.6b"}[self.kind]

    def to_dict(self) -> dict:
        return {k: v for k, v in asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict) -> "Scheme":
        return cls(**d)


F32 = Scheme("f32")
F16 = Scheme("f16")
TERNARY = Scheme("ternary")


def _bits_scheme(bits: int, group_size: int, method: str) -> Scheme:
    if bits == 32:
        return F32
    if bits == 16:
        return F16
    if bits not in INTN_BITS:
        raise ExportError(f"unsupported bits {bits} (choose from {', '.join(map(str, INTN_BITS))}, 16 or 32)")
    if group_size not in GROUP_SIZES:
        raise ExportError(f"unsupported group size {group_size} (choose from {', '.join(map(str, GROUP_SIZES))})")
    return Scheme("intn", bits, group_size, method)


@dataclass
class Recipe:
    """role -> Scheme, plus the vision tower's weight bits (8, 16 or 32)."""

    roles: dict[str, Scheme] = field(default_factory=dict)
    vision_bits: int = 8

    @classmethod
    def default(cls, bits: int = 4, group_size: int = 128, method: str = "rtn", vision_bits: int = 8,
                overrides: str | None = None) -> "Recipe":
        if method not in METHODS:
            raise ExportError(f"unsupported method {method!r} (choose rtn or gptq)")
        if vision_bits not in (8, 16, 32):
            raise ExportError(f"unsupported vision bits {vision_bits} (choose 8, 16 or 32)")
        main = _bits_scheme(bits, group_size, method)
        head = F16 if bits == 16 else _bits_scheme(8, group_size, method)
        roles = {"embed": head, "lm_head": head, "ternary_expert": TERNARY}
        roles.update({r: main for r in ("attn", "ffn", "shared_expert", "fp_expert", "residual_mlp")})
        roles.update({r: F32 for r in FLOAT_ONLY_ROLES})
        recipe = cls(roles, vision_bits)
        if overrides:
            recipe.apply_overrides(overrides, group_size, method)
        return recipe

    def apply_overrides(self, text: str, group_size: int, method: str) -> None:
        """Parse `role=bits[gGROUP],...`, e.g. `embed=4,attn=8g64,router=16`."""
        for item in filter(None, (s.strip() for s in text.split(","))):
            role, sep, value = item.partition("=")
            role, value = role.strip(), value.strip().lower()
            if not sep or not value:
                raise ExportError(f"bad --recipe entry {item!r} (expected role=bits, e.g. attn=8)")
            if role not in RECIPE_ROLES:
                raise ExportError(f"unknown role {role!r} in --recipe (roles: {', '.join(RECIPE_ROLES)})")
            bits_text, _, group_text = value.partition("g")
            try:
                bits = int(bits_text)
                group = int(group_text) if group_text else group_size
            except ValueError:
                raise ExportError(f"bad --recipe entry {item!r} (expected role=bits, e.g. attn=8 or attn=4g64)") from None
            if role == "vision":
                if bits not in (8, 16, 32):
                    raise ExportError(f"vision weights need 8, 16 or 32 bits, got {bits}")
                self.vision_bits = bits
                continue
            scheme = _bits_scheme(bits, group, method)
            if role in FLOAT_ONLY_ROLES and scheme.kind == "intn":
                raise ExportError(f"role {role} is stored as fp32 or fp16 only (got {bits} bits)")
            self.roles[role] = scheme

    def gptq_roles(self) -> set[str]:
        """Roles quantized to int-N with GPTQ (they need calibration Hessians)."""
        return {r for r, s in self.roles.items() if s.kind == "intn" and s.method == "gptq"}

    def scheme_for(self, role: str) -> Scheme:
        if role not in self.roles:
            raise ExportError(f"the recipe has no scheme for role {role!r}")
        return self.roles[role]

    def to_dict(self) -> dict:
        return {"roles": {r: s.to_dict() for r, s in self.roles.items()}, "vision_bits": self.vision_bits}

    @classmethod
    def from_dict(cls, d: dict) -> "Recipe":
        return cls({r: Scheme.from_dict(s) for r, s in d["roles"].items()}, d["vision_bits"])
