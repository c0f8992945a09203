"""What the manager hands a template: settings, target, generation and the inherited file descriptors."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from typing import Any

ENV_VAR = "CORRAL_TEMPLATE_SPEC"


@dataclass
class ListenerSpec:
    fd: int
    role: str  # "app": serves the app; "http": the plain-HTTP listener of --https (challenges, redirect)
    tls: bool = False


@dataclass
class TemplateSpec:
    settings: dict[str, Any]
    module: str
    attr: str
    path: str
    generation: int
    manager_pid: int
    channel_fd: int
    scoreboard_fd: int
    listeners: list[ListenerSpec] = field(default_factory=list)
    state_dir: str = ""

    def dumps(self) -> str:
        return json.dumps(asdict(self))

    @classmethod
    def loads(cls, text: str) -> TemplateSpec:
        data = json.loads(text)
        data["listeners"] = [ListenerSpec(**item) for item in data["listeners"]]
        return cls(**data)
