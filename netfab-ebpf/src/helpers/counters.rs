//! Per-CPU traffic and drop counters, and the verdict type every path returns.
use aya_ebpf::{
    bindings::{TC_ACT_OK, TC_ACT_SHOT},
    programs::TcContext,
};
use aya_log_ebpf::debug;
use netfab_common::{Direction, DropReason, SETTINGS_F_LOG_DROPS};

use super::maps::{DROPS, SETTINGS, TRAFFIC};

/// What a program decided. Drops carry their reason so they are always counted.
pub enum Verdict {
    Action(i32),
    Drop(DropReason),
}

impl Verdict {
    #[inline(always)]
    pub fn finish(self, ctx: &TcContext) -> i32 {
        match self {
            Verdict::Action(a) => a,
            Verdict::Drop(reason) => {
                count_drop(reason);
                // Logging is opt-in: under a flood it would cost the agent
                // CPU for every junk frame.
                if SETTINGS
                    .get(0)
                    .is_some_and(|s| s.flags & SETTINGS_F_LOG_DROPS != 0)
                {
                    debug!(ctx, "netfab drop reason={}", reason as u32);
                }
                TC_ACT_SHOT as i32
            }
        }
    }
}

#[inline(always)]
pub fn count(dir: Direction, bytes: u32) {
    if let Some(c) = TRAFFIC.get_ptr_mut(dir as u32) {
        // SAFETY: a per-CPU slot is only touched by this CPU while the program
        // runs, and the pointer comes from a successful map lookup.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes as u64;
        }
    }
}

#[inline(always)]
fn count_drop(reason: DropReason) {
    if let Some(c) = DROPS.get_ptr_mut(reason as u32) {
        // SAFETY: as in `count`.
        unsafe { *c += 1 };
    }
}

/// Hand to the host stack, counted.
#[inline(always)]
pub fn to_stack(ctx: &TcContext) -> Verdict {
    count(Direction::ToStack, ctx.len());
    Verdict::Action(TC_ACT_OK as i32)
}

#[inline(always)]
pub fn drop_with(reason: DropReason) -> Verdict {
    Verdict::Drop(reason)
}
