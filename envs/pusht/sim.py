"""PushT physics: the reference's pymunk scene, stepped exactly as the reference steps it (pymunk 7)."""

from __future__ import annotations

import math

import numpy as np
import pymunk

from envs.pusht import geometry as geo

SIM_HZ = 100
CONTROL_HZ = 10
DT = 1.0 / SIM_HZ
SUBSTEPS = SIM_HZ // CONTROL_HZ
K_P, K_V = 100.0, 20.0  # the agent's PD gains

# A contact as pymunk's debug draw marks it: the two points and the contact normal (world frame).
Contact = tuple[float, float, float, float, float, float]


class PushTSim:
    """The pymunk scene of PushT: walls, a kinematic disc agent and a dynamic T block."""

    def __init__(self) -> None:
        space = pymunk.Space()
        space.gravity = (0.0, 0.0)
        # damping 0 removes all velocity every step: the block stops as soon as it is not pushed.
        space.damping = 0.0
        # Same insertion order as the reference (walls, agent, block): it fixes the solver's order.
        space.add(*(pymunk.Segment(space.static_body, a, b, geo.WALL_RADIUS) for a, b in geo.WALLS))

        agent = pymunk.Body(body_type=pymunk.Body.KINEMATIC)
        agent.position = (256.0, 400.0)
        space.add(agent, pymunk.Circle(agent, geo.AGENT_RADIUS))

        bar, stem = (list(map(tuple, part)) for part in geo.TEE_PARTS)
        # The reference sums the bar's moment twice (it never uses the stem's); kept for fidelity.
        moment = 2.0 * pymunk.moment_for_poly(1.0, bar)
        block = pymunk.Body(1.0, moment)
        shapes = (pymunk.Poly(block, bar), pymunk.Poly(block, stem))
        # Shape friction stays at pymunk's default 0: contacts are frictionless, as in the reference.
        block.center_of_gravity = (shapes[0].center_of_gravity + shapes[1].center_of_gravity) / 2
        block.position = (256.0, 300.0)
        block.angle = 0.0
        space.add(block, *shapes)

        space.on_collision(0, 0, post_solve=self._post_solve)
        self.space, self.agent, self.block = space, agent, block
        self.n_contact_points = 0
        self.contacts: list[Contact] = []  # contacts of the last physics substep, for rendering
        self._record_contacts = True

    def _post_solve(self, arbiter: pymunk.Arbiter, space: pymunk.Space, data: object) -> None:
        cps = arbiter.contact_point_set
        self.n_contact_points += len(cps.points)
        if self._record_contacts:  # only the last substep's contacts are drawn
            nx, ny = cps.normal
            for p in cps.points:
                self.contacts.append((p.point_a.x, p.point_a.y, p.point_b.x, p.point_b.y, nx, ny))

    def set_state(self, state: np.ndarray | list[float], legacy: bool = True) -> None:
        """Place agent and block at ``[ax, ay, bx, by, angle]`` and run one physics step, as the reference does.

        Setting the angle rotates the body about its centre of gravity, so the order matters:
        ``legacy`` sets the position first (the dataset and evaluation do), otherwise the angle first.
        """
        ax, ay, bx, by, angle = (float(v) for v in state)
        self.agent.position = (ax, ay)
        if legacy:
            self.block.position = (bx, by)
            self.block.angle = angle
        else:
            self.block.angle = angle
            self.block.position = (bx, by)
        self.n_contact_points = 0
        self.contacts = []
        self.space.step(DT)

    def place(self, agent_pos: np.ndarray, agent_vel: np.ndarray, block_pose: np.ndarray) -> None:
        """Put agent and block exactly at the given positions (block origin pose), bodies at rest, no step.

        For planning on a scratch copy: unlike :meth:`set_state` it neither rotates the block about its
        centre of gravity after placing it nor advances time.
        """
        self.agent.position = (float(agent_pos[0]), float(agent_pos[1]))
        self.agent.velocity = (float(agent_vel[0]), float(agent_vel[1]))
        self.block.angle = float(block_pose[2])
        self.block.position = (float(block_pose[0]), float(block_pose[1]))
        self.block.velocity = (0.0, 0.0)
        self.block.angular_velocity = 0.0
        self.n_contact_points = 0
        self.contacts = []

    def step(self, action: tuple[float, float]) -> None:
        """Advance one control step (10 substeps) with the agent PD-tracking the target ``action``."""
        tx, ty = float(action[0]), float(action[1])
        agent, space = self.agent, self.space
        self.n_contact_points = 0
        self.contacts = []
        for i in range(SUBSTEPS):
            px, py = agent.position
            vx, vy = agent.velocity
            # Same expression order as the reference so results agree to the last bit.
            ax = K_P * (tx - px) + K_V * (0.0 - vx)
            ay = K_P * (ty - py) + K_V * (0.0 - vy)
            agent.velocity = (vx + ax * DT, vy + ay * DT)
            self._record_contacts = i == SUBSTEPS - 1
            space.step(DT)
        self._record_contacts = True

    @property
    def n_contacts(self) -> int:
        """Contact points counted in the last control step, per substep, rounded up (the reference's figure)."""
        return int(math.ceil(self.n_contact_points / SUBSTEPS))

    @property
    def agent_pos(self) -> np.ndarray:
        """Agent position (2,)."""
        return np.array(self.agent.position)

    @property
    def agent_vel(self) -> np.ndarray:
        """Agent velocity (2,), pixels per second."""
        return np.array(self.agent.velocity)

    @property
    def block_pose(self) -> np.ndarray:
        """Block (x, y, angle) of the body origin; the angle is pymunk's, not wrapped."""
        x, y = self.block.position
        return np.array([x, y, self.block.angle])

    def state(self) -> np.ndarray:
        """``[ax, ay, bx, by, angle]`` with the raw (unwrapped) angle, as the public dataset stores it."""
        ax, ay = self.agent.position
        bx, by = self.block.position
        return np.array([ax, ay, bx, by, self.block.angle])
