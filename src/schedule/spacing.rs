//! Timestep spacings: diffusers' and the DPM-Solver reference's.
