//! `NameStore::name_use`: who already has a name, compared by key as the unique index compares.

use loraforge_domain::LoraName;

use crate::helpers::{Repo, create, new_lora, now, user};

fn key(name: &str) -> String {
    LoraName::parse(name).unwrap().key()
}

pub async fn name_use_tells_yours_from_others(repo: Repo) {
    let (me, my_ds) = user(&repo).await;
    let (other, other_ds) = user(&repo).await;
    let (third, third_ds) = user(&repo).await;

    let unused = repo.name_use(me, &key("Cyberpunk Girl")).await.unwrap();
    assert!(!unused.yours);
    assert_eq!(unused.others, 0);

    create(&repo, new_lora(other, other_ds, "Cyberpunk Girl", now())).await;
    create(&repo, new_lora(third, third_ds, "CYBERPUNK GIRL", now())).await;
    let theirs = repo.name_use(me, &key("cyberpunk girl")).await.unwrap();
    assert!(!theirs.yours, "{theirs:?}");
    assert_eq!(
        theirs.others, 2,
        "compared by key: case and width do not matter"
    );

    create(&repo, new_lora(me, my_ds, "Ｃｙｂｅｒｐｕｎｋ Girl", now())).await;
    let mine = repo.name_use(me, &key("Cyberpunk Girl")).await.unwrap();
    assert!(mine.yours, "{mine:?}");
    assert_eq!(mine.others, 2);
    // From another user's side, mine counts among the others.
    let from_other = repo.name_use(other, &key("Cyberpunk Girl")).await.unwrap();
    assert!(from_other.yours);
    assert_eq!(from_other.others, 2);
    // A different name is untouched.
    assert_eq!(
        repo.name_use(me, &key("Cyberpunk Boy")).await.unwrap(),
        loraforge_db::NameUse::default()
    );
}
