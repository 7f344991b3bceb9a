"""The architectures: one entry each, stating what its blocks do and how the report shows it.

An arch is the paper's stem, stages and convolutions with its blocks chosen by the entry's flags
(resnet.nets builds them, resnet.blocks has the blocks). Everything that names archs reads this registry:
`build_model`, `bench run --arch` and `bench time --arch` (choices and help), `bench models`, and the
report's titles, colours, line styles and verdicts. Adding an arch is one `register` call, plus its block
code if no flag here builds it. Registration order is the order archs are listed, drawn and styled in.

The presentation fields are plain data, since resnet knows nothing of plotting: `title` heads the arch's
panel, and `colours` names its colour family, which bench's figures map to a palette ("cool": blues and
greens, used for archs with a shortcut; "warm": reds and pinks, for those without).
"""

from __future__ import annotations

import dataclasses
import re

from .checks import ModelConfigError, check_choice

COLOUR_FAMILIES = ("cool", "warm")
# A name goes into run_ids, folder names and figure gids, so it stays a lowercase token.
_NAME = re.compile(r"[a-z][a-z0-9]*(-[a-z0-9]+)*")


@dataclasses.dataclass(frozen=True)
class Arch:
    """One architecture. The flags change one thing each against the paper's blocks:

    - ``shortcut``: each block adds an identity or projection shortcut (the paper's residual net); without it
      the block is the plain counterpart, ``relu(F(x))``. The verdicts read it: a deeper net with a shortcut
      should train better (the paper's finding), one without may degrade.
    - ``preact``: pre-activation units (norm and ReLU before each conv, He et al. 2016); needs a shortcut.
    - ``zero_init``: each block's last norm weight starts at 0, so every residual branch starts at zero
      (Goyal et al. 2017); needs a shortcut, or the net would start as a constant.
    - ``dirac``: every block conv is Dirac-parameterised (DiracNets, Zagoruyko and Komodakis 2017); not with
      ``preact``, whose blocks have no Dirac convs.
    - ``paper``: one of the paper's two archs, which `bench run` trains and the report draws by default.
    """

    name: str
    title: str
    colours: str
    shortcut: bool
    preact: bool = False
    zero_init: bool = False
    dirac: bool = False
    paper: bool = False

    @property
    def twin(self) -> str:
        """The paper's arch with the same layers and the same shortcut or none, to compare it with."""
        return "residual" if self.shortcut else "plain"

    def check(self) -> None:
        """A ModelConfigError naming the fix unless the entry can be built and drawn."""
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ModelConfigError(f"arch name {self.name!r} must be lowercase letters, digits and single "
                                   "hyphens, starting with a letter (it goes into run_ids and folder names)")
        if not isinstance(self.title, str) or not self.title.strip():
            raise ModelConfigError(f"arch {self.name!r} needs a title: the report heads its panel with it")
        check_choice(f"colour family of arch {self.name!r}", self.colours, COLOUR_FAMILIES)
        if (self.preact or self.zero_init) and not self.shortcut:
            flag = "preact" if self.preact else "zero_init"
            raise ModelConfigError(f"arch {self.name!r}: {flag} needs shortcut=True (a plain block has no branch "
                                   "to pre-activate or start at zero)")
        if self.preact and self.dirac:
            raise ModelConfigError(f"arch {self.name!r}: preact and dirac do not combine (the pre-activation "
                                   "blocks have no Dirac convs): choose one")


_REGISTRY: dict[str, Arch] = {}


def register(arch: Arch) -> Arch:
    """Add an arch (checked first); a name already taken is refused, so no entry is replaced unseen."""
    arch.check()
    if arch.name in _REGISTRY:
        raise ModelConfigError(f"arch {arch.name!r} is already registered: choose another name")
    _REGISTRY[arch.name] = arch
    return arch


def unregister(name: str) -> None:
    """Remove an arch registered earlier (a test's throwaway one); the built-in archs stay."""
    if name in BUILT_IN:
        raise ModelConfigError(f"arch {name!r} is built in and stays registered")
    check_choice("arch", name, arch_names())
    del _REGISTRY[name]


def get_arch(name: str) -> Arch:
    """The entry of a registered arch; a ModelConfigError naming the registered ones otherwise."""
    check_choice("arch", name, arch_names())
    return _REGISTRY[name]


def registered() -> tuple[Arch, ...]:
    """Every registered arch, in registration order."""
    return tuple(_REGISTRY.values())


def arch_names() -> tuple[str, ...]:
    """Every registered arch's name, in registration order."""
    return tuple(_REGISTRY)


def paper_archs() -> tuple[str, ...]:
    """The paper's archs (plain and residual): what `bench run` trains unless told otherwise."""
    return tuple(a.name for a in _REGISTRY.values() if a.paper)


def remedies() -> tuple[str, ...]:
    """Every registered arch that is not one of the paper's."""
    return tuple(a.name for a in _REGISTRY.values() if not a.paper)


def has_shortcut(name: str) -> bool:
    """Whether a registered arch's blocks add a shortcut; False for a name not registered (an arch from
    results whose entry is not loaded reads as shortcut-free, the cautious verdict)."""
    return name in _REGISTRY and _REGISTRY[name].shortcut


# The paper's two archs, which `bench run` trains unless told otherwise, then the remedies for degradation that
# later work proposed (docs/remedies.md), each the same layers with one thing changed:
#   preact     pre-activation units (He et al. 2016, "Identity Mappings in Deep Residual Networks")
#   zero-init  each block's last norm weight starting at 0, so the net starts as its stem and head (Goyal et al.
#              2017, "Accurate, Large Minibatch SGD"; torchvision's zero_init_residual)
#   dirac      no shortcuts; every block conv Dirac-parameterised (Zagoruyko and Komodakis 2017, DiracNets)
BUILT_IN = tuple(register(a).name for a in (
    Arch("plain", "plain networks", "warm", shortcut=False, paper=True),
    Arch("residual", "residual networks", "cool", shortcut=True, paper=True),
    Arch("preact", "pre-activation residual", "cool", shortcut=True, preact=True),
    Arch("zero-init", "residual, branches start at zero", "cool", shortcut=True, zero_init=True),
    Arch("dirac", "Dirac-parameterised plain", "warm", shortcut=False, dirac=True),
))
