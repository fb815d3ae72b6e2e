//! A laboratory of network namespaces for multi-host tests: each "host" is a namespace with
//! one veth into a bridge of the root namespace, so the test process (in the root namespace)
//! reaches every host and the hosts reach each other, all on a private /24 that nothing
//! outside this machine routes. Faults are made inside the hosts: a blackhole route cuts one
//! direction of one host pair (`cut`), `tc tbf` slows a host's link (`shape`), SIGSTOP and
//! SIGKILL are the processes' own.
//!
//! Everything is named after this process and a counter (so tests running side by side and
//! a leftover of a killed run never collide) and removed on drop: the namespaces (their veth
//! ends go with them) and the bridge. Needs root and iproute2; [`Lab::try_create`] says why
//! not when it cannot, and a test then skips unless `RINGMQ_REQUIRE_NETNS=1` (as the suite
//! sets it) turns that into a failure.

use std::process::Command;
use std::sync::atomic::{AtomicU32, Ordering};

/// One host of a [`Lab`].
#[derive(Clone, Debug)]
pub struct Host {
    /// The namespace's name (`ip netns exec NAME ...`).
    pub netns: String,
    /// Its address on the lab's network.
    pub ip: String,
    /// The veth end inside the namespace (what `shape` limits).
    veth: String,
    /// Its peer in the root namespace, on the bridge (what `shape_incoming` limits).
    outer: String,
}

pub struct Lab {
    pub hosts: Vec<Host>,
    bridge: String,
    /// The root namespace's address on the lab's network (where the test's clients come from).
    pub gateway: String,
}

fn ip(args: &[&str]) -> Result<(), String> {
    run("ip", args)
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let out = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

impl Lab {
    /// `count` hosts (at most 200), or why they cannot be made here.
    pub fn try_create(count: usize) -> Result<Lab, String> {
        assert!((1..=200).contains(&count));
        if unsafe { libc::geteuid() } != 0 {
            return Err("network namespaces need root".into());
        }
        static NEXT: AtomicU32 = AtomicU32::new(0);
        let serial = NEXT.fetch_add(1, Ordering::SeqCst);
        let pid = std::process::id();
        // Interface names are at most 15 bytes: "rq" + 5 digits of the pid + serial + role.
        let tag = format!("rq{:05}{serial}", pid % 100_000);
        // A /24 per lab, from 10.213.0.0/16: the pid and the counter spread labs apart.
        let subnet = (pid.wrapping_mul(7).wrapping_add(serial * 31)) % 250 + 1;
        let mut lab = Lab {
            hosts: Vec::new(),
            bridge: format!("{tag}br"),
            gateway: format!("10.213.{subnet}.254"),
        };
        // From here on, Drop removes whatever was made, also when a step fails.
        ip(&["link", "add", &lab.bridge, "type", "bridge"])?;
        ip(&[
            "addr",
            "add",
            &format!("{}/24", lab.gateway),
            "dev",
            &lab.bridge,
        ])?;
        ip(&["link", "set", &lab.bridge, "up"])?;
        for i in 0..count {
            let netns = format!("{tag}h{i}");
            let outer = format!("{tag}o{i}");
            let veth = format!("{tag}v{i}");
            let host_ip = format!("10.213.{subnet}.{}", i + 1);
            ip(&["netns", "add", &netns])?;
            lab.hosts.push(Host {
                netns: netns.clone(),
                ip: host_ip.clone(),
                veth: veth.clone(),
                outer: outer.clone(),
            });
            ip(&["link", "add", &outer, "type", "veth", "peer", "name", &veth])?;
            ip(&["link", "set", &outer, "master", &lab.bridge, "up"])?;
            ip(&["link", "set", &veth, "netns", &netns])?;
            ip(&[
                "-n",
                &netns,
                "addr",
                "add",
                &format!("{host_ip}/24"),
                "dev",
                &veth,
            ])?;
            ip(&["-n", &netns, "link", "set", &veth, "up"])?;
            ip(&["-n", &netns, "link", "set", "lo", "up"])?;
        }
        Ok(lab)
    }

    /// A lab for a test, or `None` (the test returns) with a message on stderr when this
    /// machine cannot make one; with `RINGMQ_REQUIRE_NETNS=1` that is a failure instead.
    pub fn for_test(count: usize) -> Option<Lab> {
        match Lab::try_create(count) {
            Ok(lab) => Some(lab),
            Err(why) if std::env::var("RINGMQ_REQUIRE_NETNS").as_deref() != Ok("1") => {
                eprintln!("skipped: cannot make network namespaces here: {why}");
                None
            }
            Err(why) => panic!("RINGMQ_REQUIRE_NETNS=1 and no network namespaces: {why}"),
        }
    }

    /// A command that runs `program` inside host `host`'s namespace (the process keeps its pid:
    /// `ip netns exec` execs it).
    pub fn command(&self, host: usize, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args(["netns", "exec", &self.hosts[host].netns, program]);
        command
    }

    /// Drops every packet host `from` sends to host `to` (a blackhole route in `from`): one
    /// direction; [`Lab::partition`] cuts both.
    pub fn cut(&self, from: usize, to: usize) {
        let (from, to) = (&self.hosts[from], &self.hosts[to]);
        ip(&[
            "-n",
            &from.netns,
            "route",
            "add",
            "blackhole",
            &format!("{}/32", to.ip),
        ])
        .expect("add blackhole route");
    }

    /// Undoes [`Lab::cut`].
    pub fn mend(&self, from: usize, to: usize) {
        let (from, to) = (&self.hosts[from], &self.hosts[to]);
        ip(&[
            "-n",
            &from.netns,
            "route",
            "del",
            "blackhole",
            &format!("{}/32", to.ip),
        ])
        .expect("remove blackhole route");
    }

    /// Cuts `a` and `b` apart both ways.
    pub fn partition(&self, a: usize, b: usize) {
        self.cut(a, b);
        self.cut(b, a);
    }

    /// Undoes [`Lab::partition`].
    pub fn heal(&self, a: usize, b: usize) {
        self.mend(a, b);
        self.mend(b, a);
    }

    /// Limits what host `host` sends to `rate` (a `tc tbf` rate such as `8mbit`).
    pub fn shape(&self, host: usize, rate: &str) {
        let h = &self.hosts[host];
        run(
            "ip",
            &[
                "netns", "exec", &h.netns, "tc", "qdisc", "replace", "dev", &h.veth, "root", "tbf",
                "rate", rate, "burst", "32kbit", "latency", "400ms",
            ],
        )
        .expect("tc tbf");
    }

    /// Limits what host `host` receives, from every other host and the root namespace alike,
    /// to `rate` (`tc tbf` on its veth's peer on the bridge): a slave whose link cannot keep
    /// up with its master.
    pub fn shape_incoming(&self, host: usize, rate: &str) {
        let h = &self.hosts[host];
        run(
            "tc",
            &[
                "qdisc", "replace", "dev", &h.outer, "root", "tbf", "rate", rate, "burst",
                "32kbit", "latency", "400ms",
            ],
        )
        .expect("tc tbf");
    }

    /// Removes [`Lab::shape_incoming`]'s limit.
    pub fn unshape_incoming(&self, host: usize) {
        let h = &self.hosts[host];
        run("tc", &["qdisc", "del", "dev", &h.outer, "root"]).expect("tc qdisc del");
    }

    /// Removes [`Lab::shape`]'s limit.
    pub fn unshape(&self, host: usize) {
        let h = &self.hosts[host];
        run(
            "ip",
            &[
                "netns", "exec", &h.netns, "tc", "qdisc", "del", "dev", &h.veth, "root",
            ],
        )
        .expect("tc qdisc del");
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        for host in &self.hosts {
            // Processes still inside keep a namespace alive only as long as they run; the
            // name is gone at once either way.
            let _ = ip(&["netns", "del", &host.netns]);
        }
        let _ = ip(&["link", "del", &self.bridge]);
    }
}
