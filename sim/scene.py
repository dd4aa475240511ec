"""The MJCF of the table-top scene: table, mocap-driven parallel-jaw gripper, scene and wrist cameras.

World frame = robot base frame (m): x points away from the robot, z up, the table top is the plane
z = 0. Tasks add their objects as MJCF ``<body>`` snippets with ``tabletop_xml(task_bodies=...)``.

The gripper: a ``hand`` body with a free joint, welded to the ``mocap`` body (the env moves the mocap,
the weld drags the hand along compliantly, contacts push back). The hand frame is the tool centre
point (TCP) between the finger pads, with z along the approach direction (out of the fingers), x
forward, and the fingers sliding along y. A top-down grasp at yaw 0 is R = diag(1, -1, -1). The two
fingers are coupled by an equality constraint and driven by one position actuator whose control is
the half width (m); the gripper width is the sum of both finger joints.
"""

from __future__ import annotations

import numpy as np

# gripper geometry (m), hand frame
FINGER_HALF = (0.010, 0.005, 0.025)  # half sizes of a finger pad (x, y, z)
FINGER_Z = -0.010  # finger pad centre along the approach axis: tips reach z = +0.015
PALM_HALF = (0.022, 0.065, 0.010)
PALM_Z = FINGER_Z - FINGER_HALF[2] - PALM_HALF[2]
MAX_WIDTH = 0.08  # m, fully open
TOP_DOWN = np.diag([1.0, -1.0, -1.0])  # hand orientation of a top-down grasp at yaw 0

# cameras: position and look-at point; the wrist camera's are in the hand frame
SCENE_CAM_POS = (0.95, 0.0, 0.7)
SCENE_CAM_LOOKAT = (0.42, 0.03, 0.09)
SCENE_CAM_FOVY = 45.0
WRIST_CAM_POS = (-0.05, 0.0, -0.045)  # behind and level with the palm, looking forward-down past the fingers
WRIST_CAM_LOOKAT = (0.0, 0.0, 0.06)
WRIST_CAM_FOVY = 80.0


def look_at_xyaxes(pos, target, up=(0.0, 0.0, 1.0)) -> str:
    """MJCF ``xyaxes`` of a camera at ``pos`` looking at ``target`` (a camera looks along its -z)."""
    f = np.asarray(target, float) - np.asarray(pos, float)
    f /= np.linalg.norm(f)
    x = np.cross(f, np.asarray(up, float))
    x /= np.linalg.norm(x)
    y = np.cross(x, f)
    return " ".join(f"{v:.6f}" for v in (*x, *y))


def _v(values) -> str:
    return " ".join(f"{float(v):.6g}" for v in values)


def _quat_wxyz(m: np.ndarray) -> str:
    import mujoco

    q = np.zeros(4)
    mujoco.mju_mat2Quat(q, np.asarray(m, float).reshape(-1))
    return _v(q)


def gripper_xml(pos, rot: np.ndarray) -> str:
    """The mocap body and the hand (free joint, fingers, wrist camera) at TCP pose (pos, rot)."""
    fx, fy, fz = FINGER_HALF
    quat = _quat_wxyz(rot)
    wrist_axes = look_at_xyaxes(WRIST_CAM_POS, WRIST_CAM_LOOKAT, up=(1.0, 0.0, 0.0))
    return f"""
    <body name="mocap" mocap="true" pos="{_v(pos)}" quat="{quat}"/>
    <body name="hand" pos="{_v(pos)}" quat="{quat}" gravcomp="1">
      <freejoint name="hand"/>
      <site name="tcp" size="0.004" rgba="1 0 0 0" group="4"/>
      <geom name="palm" type="box" size="{_v(PALM_HALF)}" pos="0 0 {PALM_Z:.4f}" mass="0.3" rgba="0.25 0.25 0.28 1"/>
      <geom name="wrist" type="cylinder" size="0.025 0.03" pos="0 0 {PALM_Z - 0.04:.4f}" mass="0.1"
            contype="0" conaffinity="0" rgba="0.35 0.35 0.4 1"/>
      <camera name="wrist" pos="{_v(WRIST_CAM_POS)}" xyaxes="{wrist_axes}" fovy="{WRIST_CAM_FOVY}"/>
      <body name="finger_l" gravcomp="1">
        <joint name="finger_l" type="slide" axis="0 1 0" range="0 {MAX_WIDTH / 2}" damping="2" armature="0.01"/>
        <geom name="finger_l" type="box" size="{fx} {fy} {fz}" pos="0 {fy} {FINGER_Z}" mass="0.05"
              friction="1.5 0.01 0.001" condim="4" rgba="0.8 0.8 0.85 1"/>
      </body>
      <body name="finger_r" gravcomp="1">
        <joint name="finger_r" type="slide" axis="0 -1 0" range="0 {MAX_WIDTH / 2}" damping="2" armature="0.01"/>
        <geom name="finger_r" type="box" size="{fx} {fy} {fz}" pos="0 {-fy} {FINGER_Z}" mass="0.05"
              friction="1.5 0.01 0.001" condim="4" rgba="0.8 0.8 0.85 1"/>
      </body>
    </body>"""


def tabletop_xml(task_bodies: str, ee_pos, ee_rot: np.ndarray, timestep: float, image_size: tuple[int, int],
                 scene_cam: tuple = (SCENE_CAM_POS, SCENE_CAM_LOOKAT, SCENE_CAM_FOVY)) -> str:
    """The whole MJCF: scene + gripper at TCP pose (``ee_pos`` m, ``ee_rot`` (3, 3)) + ``task_bodies``.

    ``timestep`` is the physics step (s); ``image_size`` (H, W) sizes the offscreen buffer; ``scene_cam`` is the
    scene camera's (position m, look-at point m, vertical field of view deg).
    """
    h, w = image_size
    cam_pos, cam_lookat, cam_fovy = scene_cam
    scene_axes = look_at_xyaxes(cam_pos, cam_lookat)
    return f"""
<mujoco model="tabletop">
  <compiler angle="radian" autolimits="true"/>
  <statistic extent="1" center="0.4 0 0.1"/>  <!-- map.znear/zfar are relative to the extent: 5 mm .. 20 m -->
  <option timestep="{timestep}" integrator="implicitfast" cone="elliptic" impratio="5"/>
  <visual>
    <global offwidth="{max(w, 640)}" offheight="{max(h, 480)}"/>
    <quality shadowsize="0" offsamples="0"/>
    <map znear="0.005" zfar="20"/>
    <headlight ambient="0.35 0.35 0.35" diffuse="0.3 0.3 0.3" specular="0 0 0"/>
  </visual>
  <default>
    <geom solref="0.01 1" solimp="0.95 0.99 0.001" friction="1 0.005 0.0001"/>
  </default>
  <worldbody>
    <light name="sun" directional="true" pos="0.4 -0.3 1.5" dir="-0.2 0.2 -1" diffuse="0.6 0.6 0.6"
           specular="0 0 0" castshadow="false"/>
    <geom name="floor" type="box" pos="0 0 -0.76" size="3 3 0.01" rgba="0.45 0.42 0.4 1"
          contype="0" conaffinity="0"/>
    <geom name="table" type="box" pos="0.45 0 -0.02" size="0.45 0.55 0.02" rgba="0.62 0.55 0.45 1"/>
    <geom name="base" type="cylinder" pos="0 0 0.05" size="0.06 0.05" rgba="0.9 0.9 0.9 1"
          contype="0" conaffinity="0"/>
    <camera name="scene" pos="{_v(cam_pos)}" xyaxes="{scene_axes}" fovy="{cam_fovy}"/>
    {gripper_xml(ee_pos, ee_rot)}
    {task_bodies}
  </worldbody>
  <contact>
    <exclude body1="finger_l" body2="finger_r"/>
  </contact>
  <equality>
    <weld name="grip_weld" body1="mocap" body2="hand" solref="0.01 1"/>
    <joint joint1="finger_r" joint2="finger_l" polycoef="0 1 0 0 0" solref="0.005 1"/>
  </equality>
  <actuator>
    <position name="fingers" joint="finger_l" kp="400" kv="10" ctrlrange="0 {MAX_WIDTH / 2}" forcerange="-20 20"/>
  </actuator>
</mujoco>"""
