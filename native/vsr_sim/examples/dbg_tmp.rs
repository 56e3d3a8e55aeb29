use vsr_sim::scenarios::{self, options, PHASE_TICKS};
use vsr_sim::Simulator;
fn main() {
    let mut sim = Simulator::new(options(3, 1));
    scenarios::register_all(&mut sim, 1).unwrap();
    scenarios::commit(&mut sim, 0, 1).unwrap();
    println!("{}", sim.describe());
    for to in [1, 2] {
        sim.network.hold(0, to);
    }
    sim.reconfigure(0, 1, &[0, 1], PHASE_TICKS).unwrap();
    println!("{}", sim.describe());
    println!("{:?}", sim.reconfigured);
}
