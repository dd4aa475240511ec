"""The observation and action keys shared by the dataset, sim, runtime and recorder.

Shapes per frame (time is the leading axis in datasets and observation windows):

- ``scene_rgb``, ``wrist_rgb``: (H, W, 3) uint8 camera images.
- ``ee_pose``: (9,) float32, end-effector position in m (3) + 6D rotation (the first two
  columns of the rotation matrix, column-major: r00, r10, r20, r01, r11, r21), base frame.
- ``gripper``: (1,) float32, measured gripper width in m.
- ``action``: (10,) float32, absolute end-effector target: position (3) + 6D rotation (6)
  + gripper width (1).
- ``timestamp``: () float64, seconds on the recorder's monotonic clock.
- ``action_history``: (To, A) in an observation window only: the last ``To`` actions that were
  actually sent to the robot before the newest observation (oldest first).
"""

from __future__ import annotations

import numpy as np
from numpy.typing import ArrayLike

SCENE_RGB = "scene_rgb"
WRIST_RGB = "wrist_rgb"
EE_POSE = "ee_pose"
GRIPPER = "gripper"
ACTION = "action"
TIMESTAMP = "timestamp"
ACTION_HISTORY = "action_history"

IMAGE_KEYS = (SCENE_RGB, WRIST_RGB)
LOWDIM_KEYS = (EE_POSE, GRIPPER)



class ActionLayout:
    """Where each part of an action (and of ``ee_pose``, its first ``pose`` entries) lives.

    Every module that needs the position, the rotation or the gripper width of an action or a pose
    takes it through these named slices; they work on numpy arrays (any leading axes) and on lists.
    """

    position = slice(0, 3)  # m, base frame
    rotation = slice(3, 9)  # 6D: the first two columns of the rotation matrix, column-major
    gripper = slice(9, 10)  # m, gripper width

    @property
    def dim(self) -> int:
        """Length of an action: 10."""
        return self.gripper.stop

    @property
    def pose(self) -> slice:
        """The pose part of an action: the layout of ``ee_pose`` (position + 6D rotation)."""
        return slice(self.position.start, self.rotation.stop)

    @property
    def width(self) -> int:
        """Index of the gripper width (a scalar index, for pure-Python lists)."""
        return self.gripper.start

    def split(self, action: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(..., 10) -> position (..., 3), rotation (..., 6), gripper (..., 1)."""
        return action[..., self.position], action[..., self.rotation], action[..., self.gripper]

    def join(self, position: ArrayLike, rotation: ArrayLike, gripper: ArrayLike) -> np.ndarray:
        """position (..., 3), rotation (..., 6), gripper (..., 1) or scalar -> (..., 10) float64."""
        position, rotation = np.asarray(position, np.float64), np.asarray(rotation, np.float64)
        gripper = np.broadcast_to(np.asarray(gripper, np.float64), (*position.shape[:-1], self.gripper.stop
                                                                     - self.gripper.start))
        return np.concatenate([position, rotation, gripper], axis=-1)


ACTION_LAYOUT = ActionLayout()
EE_POSE_DIM = ACTION_LAYOUT.pose.stop  # 9
GRIPPER_DIM = ACTION_LAYOUT.gripper.stop - ACTION_LAYOUT.gripper.start  # 1
ACTION_DIM = ACTION_LAYOUT.dim  # 10
