"""What an action means, and the one rule for the action history before the first action is sent (no torch).

The policy is conditioned on the last actions sent to the robot. At an episode's start none has been sent
yet, and training (``policy.data.sampler``) and the runtime fill those entries with the same pad:

- ``absolute`` actions (a target pose + gripper width, our convention): the measured state that holds the
  robot still, ``ee_pose`` followed by ``gripper`` (or ``ee_pose`` alone when the action has no gripper
  part, e.g. Push-T's 2-D position target);
- ``delta`` actions (robomimic's OSC deltas, velocity commands, many LeRobot datasets): the configured
  hold action, zeros by default.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from numpy.typing import ArrayLike

ACTION_SPACES = ("absolute", "delta")


def history_pad(kind: str, hold_action: ArrayLike, ee_pose: ArrayLike | None,
                gripper: ArrayLike | None = None) -> np.ndarray:
    """The action-history entry before the first sent action, float32 (..., A).

    absolute: ``ee_pose`` (..., P) followed by ``gripper`` (..., G) (None: the action has no gripper part);
    delta: ``hold_action`` (A,) (broadcast over the leading axes of ``ee_pose`` when it is given).
    """
    if kind == "delta":
        hold = np.asarray(hold_action, np.float32)
        if ee_pose is None:
            return hold.copy()
        return np.broadcast_to(hold, (*np.shape(ee_pose)[:-1], hold.shape[-1])).copy()
    if kind != "absolute":
        raise ValueError(f"action_space must be one of {ACTION_SPACES}, got {kind!r}")
    if ee_pose is None:
        raise ValueError("action_space absolute pads the action history with the measured ee_pose, got None")
    parts = [np.asarray(ee_pose, np.float32)] + ([] if gripper is None else [np.asarray(gripper, np.float32)])
    return np.concatenate(parts, axis=-1)


@dataclass(frozen=True)
class ActionSpace:
    """How a policy's actions are meant, and their history pad (``pad``).

    kind: ``absolute`` | ``delta``; action_dim: A; hold_action: delta only, the (A,) action that holds the
    robot still (empty: zeros); with_gripper: absolute only, whether the pad is ``ee_pose + gripper`` (True)
    or ``ee_pose`` alone (False: the action has no gripper part).
    """

    kind: str = "absolute"
    action_dim: int = 10
    hold_action: tuple[float, ...] = ()
    with_gripper: bool = True

    def __post_init__(self) -> None:
        if self.kind not in ACTION_SPACES:
            raise ValueError(f"policy.action_space must be one of {ACTION_SPACES}, got {self.kind!r}")
        if self.hold_action and len(self.hold_action) != self.action_dim:
            raise ValueError(f"policy.hold_action must hold policy.action_dim ({self.action_dim}) numbers, "
                             f"got {len(self.hold_action)}")
        if self.kind == "delta" and not self.hold_action:
            object.__setattr__(self, "hold_action", (0.0,) * self.action_dim)

    def pad(self, ee_pose: ArrayLike | None = None, gripper: ArrayLike | None = None) -> np.ndarray:
        """The history entry before the first sent action: float32 (..., A) from the measured ee_pose (..., P)
        and gripper (..., G) (absolute), or the hold action (delta: the measurements may be None)."""
        out = history_pad(self.kind, self.hold_action, ee_pose, gripper if self.with_gripper else None)
        if out.shape[-1] != self.action_dim:
            raise ValueError(f"action_space {self.kind}: the history pad has {out.shape[-1]} numbers "
                             f"(ee_pose {np.shape(ee_pose)}, gripper {np.shape(gripper)}), the action "
                             f"{self.action_dim}")
        return out


def absolute_pad_layout(lowdim_dims: dict[str, int], action_dim: int, ee_pose: str = "ee_pose",
                        gripper: str = "gripper") -> bool | None:
    """For absolute actions: True when the pad is ee_pose + gripper, False when ee_pose alone fills the action,
    None when the observed low-dim keys cannot make an action of ``action_dim`` numbers."""
    p, g = lowdim_dims.get(ee_pose), lowdim_dims.get(gripper)
    if p is not None and g is not None and p + g == action_dim:
        return True
    if p == action_dim:
        return False
    return None
