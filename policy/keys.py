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

SCENE_RGB = "scene_rgb"
WRIST_RGB = "wrist_rgb"
EE_POSE = "ee_pose"
GRIPPER = "gripper"
ACTION = "action"
TIMESTAMP = "timestamp"
ACTION_HISTORY = "action_history"

IMAGE_KEYS = (SCENE_RGB, WRIST_RGB)
LOWDIM_KEYS = (EE_POSE, GRIPPER)

EE_POSE_DIM = 9
GRIPPER_DIM = 1
ACTION_DIM = 10
