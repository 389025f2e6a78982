//! The VIP on a real interface: two network namespaces joined by a veth pair, made and
//! removed by the test. Needs root; skipped (saying so) otherwise.

use std::process::Command;
use std::time::Duration;

use pgfm_net::{netns, Vip, VipSpec};

fn ip(args: &[&str]) {
    let out = Command::new("ip").args(args).output().expect("running ip");
    assert!(
        out.status.success(),
        "ip {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

struct Pair {
    a: String,
    b: String,
}

impl Drop for Pair {
    fn drop(&mut self) {
        for ns in [&self.a, &self.b] {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

/// Run `f` on a thread inside namespace `ns`, with its own runtime.
fn inside<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let ns = ns.to_string();
    std::thread::spawn(move || {
        netns::enter(&ns).expect("entering the namespace");
        f()
    })
    .join()
    .expect("the thread panicked")
}

fn vip_in(
    ns: &str,
    spec: VipSpec,
    work: impl AsyncFnOnce(Vip) -> String + Send + 'static,
) -> String {
    inside(ns, move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            match Vip::open(spec).await {
                Ok(vip) => work(vip).await,
                Err(e) => format!("open failed: {e}"),
            }
        })
    })
}

#[test]
fn acquire_announce_probe_release() {
    if !nix_is_root() {
        println!("SKIPPED: the VIP test needs root (network namespaces, CAP_NET_ADMIN)");
        return;
    }
    let tag = std::process::id();
    let pair = Pair {
        a: format!("pgfmvip-a{tag}"),
        b: format!("pgfmvip-b{tag}"),
    };
    ip(&["netns", "add", &pair.a]);
    ip(&["netns", "add", &pair.b]);
    ip(&[
        "-n", &pair.a, "link", "add", "eth0", "type", "veth", "peer", "name", "eth0", "netns",
        &pair.b,
    ]);
    for (ns, addr) in [(&pair.a, "10.9.0.1/24"), (&pair.b, "10.9.0.2/24")] {
        ip(&["-n", ns, "addr", "add", addr, "dev", "eth0"]);
        ip(&["-n", ns, "link", "set", "eth0", "up"]);
        ip(&["-n", ns, "link", "set", "lo", "up"]);
    }
    let spec = VipSpec {
        address: "10.9.0.100".parse().unwrap(),
        prefix: 24,
        interface: "eth0".into(),
    };

    let missing = VipSpec {
        interface: "eth9".into(),
        ..spec.clone()
    };
    let said = vip_in(&pair.a, missing, async |_| "opened".into());
    assert!(said.contains("eth9") && said.contains("eth0"), "{said}");

    // Nobody holds it yet.
    let said = vip_in(&pair.b, spec.clone(), async |vip| {
        format!(
            "{:?}",
            vip.who_answers(2, Duration::from_millis(100))
                .await
                .unwrap()
        )
    });
    assert_eq!(said, "None");

    let said = vip_in(&pair.a, spec.clone(), async |vip| {
        let first = vip.acquire().await.unwrap();
        let again = vip.acquire().await.unwrap();
        vip.announce().await.unwrap();
        format!("{first} {again} {}", vip.held().await.unwrap())
    });
    assert_eq!(said, "true false true", "added once, then found in place");

    let said = vip_in(&pair.b, spec.clone(), async |vip| {
        format!(
            "{} {:?}",
            vip.held().await.unwrap(),
            vip.who_answers(2, Duration::from_millis(200))
                .await
                .unwrap()
                .is_some()
        )
    });
    assert_eq!(said, "false true", "the other host answers for the VIP");

    let said = vip_in(&pair.a, spec.clone(), async |vip| {
        let first = vip.release().await.unwrap();
        let again = vip.release().await.unwrap();
        format!("{first} {again} {}", vip.held().await.unwrap())
    });
    assert_eq!(said, "true false false");

    let said = vip_in(&pair.b, spec, async |vip| {
        format!(
            "{:?}",
            vip.who_answers(2, Duration::from_millis(100))
                .await
                .unwrap()
        )
    });
    assert_eq!(said, "None", "released: nobody answers");
}

fn nix_is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}
