//! Scenarios for the presence board ([`PresenceBoard`]). Each expects a
//! board of its own (a fresh key prefix on a shared Redis). Expiry is
//! tested on real time with short times to live, so one scenario sleeps,
//! and says so.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use orderflow_domain::UserId;

use crate::ports::presence::{PresenceBoard, PresenceTally};

const LONG: Duration = Duration::from_secs(60);

fn report(pairs: &[(UserId, usize)]) -> HashMap<UserId, usize> {
    pairs.iter().copied().collect()
}

/// Reports of several processes add up, a shopper on two processes counts
/// once, and a new report replaces the process's last one.
pub async fn tallies_sum_the_processes(board: Arc<dyn PresenceBoard>) {
    assert_eq!(board.tally().await.unwrap(), PresenceTally::default());
    let (ann, bob, cem) = (UserId::now_v7(), UserId::now_v7(), UserId::now_v7());
    board
        .report("api-a", &report(&[(ann, 2), (bob, 1)]), LONG)
        .await
        .unwrap();
    board
        .report("api-b", &report(&[(ann, 1), (cem, 1)]), LONG)
        .await
        .unwrap();
    assert_eq!(
        board.tally().await.unwrap(),
        PresenceTally {
            devices: 5,
            users: 3,
            processes: 2,
            users_by_devices: BTreeMap::from([(1, 2), (3, 1)]),
        }
    );

    // api-a's phone and laptop went away; api-c has nobody yet (and does
    // not count as a process with connections).
    board
        .report("api-a", &report(&[(bob, 1)]), LONG)
        .await
        .unwrap();
    board.report("api-c", &HashMap::new(), LONG).await.unwrap();
    assert_eq!(
        board.tally().await.unwrap(),
        PresenceTally {
            devices: 3,
            users: 3,
            processes: 2,
            users_by_devices: BTreeMap::from([(1, 3)]),
        }
    );
    assert!(
        board.keep_alive("api-c", LONG).await.unwrap(),
        "an empty report is kept alive like any other"
    );
}

/// A report stops counting when its time to live passes without a
/// keep-alive (a process that died), and the keep-alive then says so.
pub async fn reports_expire_unless_kept_alive(board: Arc<dyn PresenceBoard>) {
    let (ann, bob) = (UserId::now_v7(), UserId::now_v7());
    let short = Duration::from_millis(400);
    board
        .report("dying", &report(&[(ann, 1)]), short)
        .await
        .unwrap();
    board
        .report("living", &report(&[(bob, 2)]), short)
        .await
        .unwrap();
    assert!(!board.keep_alive("unknown", short).await.unwrap());
    // Sleeps on purpose: only `living` is kept alive past the first TTL.
    for _ in 0..4 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(board.keep_alive("living", short).await.unwrap());
    }
    assert_eq!(
        board.tally().await.unwrap(),
        PresenceTally {
            devices: 2,
            users: 1,
            processes: 1,
            users_by_devices: BTreeMap::from([(2, 1)]),
        },
        "the process that stopped reporting no longer counts"
    );
    assert!(
        !board.keep_alive("dying", short).await.unwrap(),
        "an expired report must be sent again whole"
    );
    board
        .report("dying", &report(&[(ann, 1)]), LONG)
        .await
        .unwrap();
    assert_eq!(board.tally().await.unwrap().devices, 3);
}
