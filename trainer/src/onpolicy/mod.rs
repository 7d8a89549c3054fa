//! What the method does with M_sft's *own* samples rather than teacher text: on-policy preference
//! pairs (`pairs on-policy`), the pre-PPO diagnostics of the two reward models on the policy's
//! samples (`diagnose`), and best-of-N under the mixed reward as a policy of its own
//! (`best-of-n`). All three draw samples the way PPO's rollouts do ([`sample`]) and score them with
//! PPO's reward-model scorer ([`reward`]), so what they measure is what PPO would see.

pub mod best_of_n;
pub mod diagnose;
pub mod pairs;
pub mod reward;
pub mod sample;
