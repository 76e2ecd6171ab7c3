//! The derived fields of the tables (`Node::derive`, at compile time) agree with the fields
//! they come from, on every node of the tables; and the facts about the tables that the
//! checkers rely on hold.

use super::accept::scalar_ok;
use super::rules_gen::ROOTS;
use super::schema::*;
use super::vocab::*;

/// Every node reachable from the tables' roots, once.
pub(crate) fn all_nodes() -> Vec<&'static Node> {
    let mut out: Vec<&'static Node> = Vec::new();
    let mut todo: Vec<&'static Node> = ROOTS.iter().map(|r| r.2).collect();
    while let Some(n) = todo.pop() {
        if out.iter().any(|m| std::ptr::eq(*m, n)) {
            continue;
        }
        out.push(n);
        todo.extend(n.items);
        todo.extend(n.properties.iter().map(|p| p.node));
        todo.extend(n.alternatives.iter().copied());
        if let Additional::Schema(m) = n.additional {
            todo.push(m);
        }
    }
    out
}

#[test]
fn derived_flags_match_the_node() {
    let nodes = all_nodes();
    assert!(nodes.len() > 400, "{}", nodes.len());
    let mut plain = 0;
    for n in nodes {
        assert_eq!(plain_string(n), plain_string_computed(n), "{n:?}");
        plain += usize::from(plain_string(n));
        for got in [T_OBJECT, T_ARRAY] {
            assert_eq!(ambiguous_for(n, got), ambiguous_computed(n, got), "{n:?}");
        }
        let objects = n
            .alternatives
            .iter()
            .filter(|a| accepts(a.types, T_OBJECT))
            .count();
        assert_eq!(
            n.flags & F_DISCRIMINATED_OBJECT != 0,
            n.discriminator.is_some() && objects > 1,
            "{n:?}"
        );
    }
    assert!(plain > 10, "{plain}");
}

fn deprecated_inside(n: &Node) -> bool {
    n.deprecated
        || n.items.is_some_and(deprecated_inside)
        || n.properties.iter().any(|p| deprecated_inside(p.node))
        || n.alternatives.iter().any(|a| deprecated_inside(a))
        || matches!(n.additional, Additional::Schema(m) if deprecated_inside(m))
}

#[test]
fn the_deprecated_inside_flag_marks_every_subtree_with_a_deprecated_node() {
    let (mut marked, mut total) = (0, 0);
    for n in all_nodes() {
        let flag = n.flags & F_DEPRECATED_INSIDE != 0;
        assert_eq!(flag, deprecated_inside(n), "{n:?}");
        marked += usize::from(flag);
        total += 1;
    }
    // The chat root (max_tokens, functions, ...) is marked; most nodes are not.
    assert!(marked > 0 && marked < total / 2, "{marked} of {total}");
}

#[test]
fn the_any_string_flag_is_what_the_scalar_rule_says() {
    let strings = [
        "",
        "a",
        "auto",
        "none",
        "user",
        "low",
        "gpt-4o",
        "text",
        "x".repeat(600).leak(),
    ];
    let mut flagged = 0;
    for n in all_nodes() {
        let flag = n.flags & F_ANY_STRING_OK != 0;
        if flag {
            flagged += 1;
            for v in strings {
                assert!(scalar_ok(n, &Scalar::Str(v)), "{v} {n:?}");
            }
        } else if n.types & T_STRING != 0 || n.types == T_ANY {
            // Not flagged: some string breaks a rule, or the node takes no string at all.
            let broken = strings.iter().any(|v| !scalar_ok(n, &Scalar::Str(v)));
            let rule = !n.enum_values.is_empty()
                || n.min_length.is_some()
                || n.max_length.is_some()
                || n.format != Format::None
                || !n.alternatives.is_empty();
            assert!(broken || rule, "{n:?}");
        }
    }
    assert!(flagged > 20, "{flagged}");
}

#[test]
fn the_discriminator_table_chooses_as_const_of_does() {
    let mut checked = 0;
    for n in all_nodes() {
        let Some(disc) = n.discriminator else {
            // A shape union keeps its name table there instead.
            if n.flags & F_SHAPE_UNION == 0 {
                assert_eq!(n.disc_props, [0; DISC_ALTS]);
            }
            continue;
        };
        let mut values: Vec<&str> = n
            .alternatives
            .iter()
            .filter_map(|a| a.const_of(disc))
            .collect();
        if n.alternatives.len() <= DISC_ALTS {
            // The probed table, not the walk over the alternatives.
            assert!(n.flags & F_DISC_TABLE != 0, "{disc}: {n:?}");
        }
        values.extend(["", "nope", "x".repeat(70).leak()]);
        for v in values {
            let expected = n
                .alternatives
                .iter()
                .copied()
                .find(|a| a.const_of(disc) == Some(v));
            let got = n.alternative_for(disc, v.as_bytes());
            assert_eq!(
                got.map(|g| g as *const Node),
                expected.map(|e| e as *const Node),
                "{disc}={v}"
            );
            checked += 1;
        }
    }
    assert!(checked > 50, "{checked}");
}

/// Two alternatives with one constant: the first is chosen, as `const_of` in order would.
#[test]
fn a_repeated_discriminator_constant_chooses_the_first_alternative() {
    const fn constant(value: &'static [&'static str]) -> Node {
        Node {
            types: T_STRING,
            enum_values: value,
            ..DERIVED
        }
        .derive()
    }
    macro_rules! typed {
        ($constant:expr) => {
            Node {
                types: T_OBJECT,
                properties: &[Prop {
                    name: "type",
                    node: $constant,
                }],
                ..DERIVED
            }
            .derive()
        };
    }
    static X: Node = constant(&["x"]);
    static Y: Node = constant(&["y"]);
    static A: Node = typed!(&Y);
    static B: Node = typed!(&X);
    static C: Node = typed!(&X);
    static U: Node = Node {
        types: T_OBJECT,
        alternatives: &[&A, &B, &C],
        discriminator: Some("type"),
        ..DERIVED
    }
    .derive();
    assert!(U.flags & F_DISC_TABLE != 0);
    assert!(std::ptr::eq(U.alternative_for("type", b"x").unwrap(), &B));
    assert!(std::ptr::eq(U.alternative_for("type", b"y").unwrap(), &A));
    assert!(U.alternative_for("type", b"z").is_none());
}

#[test]
fn shape_unions_are_the_object_unions_of_shape_only_alternatives() {
    let mut unions = 0;
    for n in all_nodes() {
        let objects: Vec<&Node> = n
            .alternatives
            .iter()
            .copied()
            .filter(|a| accepts(a.types, T_OBJECT))
            .collect();
        let shapes = objects.iter().all(|a| {
            a.types == T_OBJECT
                && a.properties.is_empty()
                && matches!(a.additional, Additional::Allowed)
                && a.max_properties.is_none()
                && a.key_max_length.is_none()
                && a.alternatives.is_empty()
                && a.discriminator.is_none()
                && a.required.len() <= 64
        });
        // Names that fit the table: at most `SHAPE_NAMES`, none twice in one alternative,
        // alternative indexes and positions below 16.
        let mut names: Vec<&str> = Vec::new();
        let mut fits = n.alternatives.len() <= 16;
        for a in &objects {
            for (j, r) in a.required.iter().enumerate() {
                fits &= j < 16 && a.required.iter().position(|q| q == r) == Some(j);
                if !names.contains(r) {
                    names.push(r);
                }
            }
        }
        fits &= names.len() <= SHAPE_NAMES;
        let expected = ambiguous_computed(n, T_OBJECT)
            && shapes
            && objects.len() <= SHAPE_ALTS
            && n.properties.is_empty()
            && fits;
        assert_eq!(n.flags & F_SHAPE_UNION != 0, expected, "{n:?}");
        unions += usize::from(expected);
        if !expected {
            continue;
        }
        // The name table: every required name found, its bit in the masks of exactly the
        // alternatives that require it; nothing else found.
        let index = |name: &str| n.shape_name(name.as_bytes());
        for name in &names {
            let d = index(name).expect(name);
            for (k, a) in objects.iter().enumerate() {
                let need = n.disc_props[k];
                assert_eq!(need & (1 << d) != 0, a.required.contains(name), "{name}");
                assert_eq!(need.count_ones() as usize, a.required.len());
            }
            for probe in [
                format!("{name}x"),
                name[1..].to_string(),
                name.to_uppercase(),
            ] {
                assert_eq!(index(&probe).is_some(), names.contains(&probe.as_str()));
            }
        }
        assert_eq!(index(""), None);
        // Deciding by masks is deciding by the alternatives' required lists, for every set
        // of names an object can have.
        for present in 0u32..(1 << names.len()) {
            let has = |r: &&str| present & (1 << names.iter().position(|q| q == r).unwrap()) != 0;
            let by_lists = objects.iter().any(|a| a.required.iter().all(&has));
            let seen = (0..names.len())
                .filter(|i| present & (1 << i) != 0)
                .map(|i| 1u8 << index(names[i]).unwrap())
                .fold(0, |m, b| m | b);
            let by_masks = n.disc_props[..objects.len()]
                .iter()
                .any(|&need| need & !seen == 0);
            assert_eq!(by_masks, by_lists);
        }
    }
    // Chat content parts (user, system, developer, tool messages) at least.
    assert!(unions >= 2, "{unions}");
}

#[test]
fn the_key_table_finds_every_property_and_nothing_else() {
    let mut tabled = 0;
    for n in all_nodes() {
        for (i, p) in n.properties.iter().enumerate() {
            // Names are unique, so the first match is the only one.
            assert_eq!(n.properties.iter().position(|q| q.name == p.name), Some(i));
            assert_eq!(n.find(p.name), Some(i), "{}", p.name);
            // A longer, a shorter and a reversed name: found iff a property has it.
            let changed: String = p.name.chars().rev().collect();
            for probe in [
                format!("{}x", p.name),
                p.name[..p.name.len() - 1].to_string(),
                changed,
            ] {
                let linear = n.properties.iter().position(|q| q.name == probe);
                assert_eq!(n.find(&probe), linear, "{probe}");
            }
        }
        assert_eq!(n.find(""), None);
        tabled += usize::from(n.slots.iter().any(|s| *s != 0));
        // Required names are unique too (a slot per name).
        for (j, r) in n.required.iter().enumerate() {
            assert_eq!(n.required.iter().position(|q| q == r), Some(j));
        }
    }
    assert!(tabled > 10, "{tabled}");
}

#[test]
fn required_slots_are_the_slots_of_the_required_names() {
    for n in all_nodes() {
        let mut mask = 0u64;
        for (j, r) in n.required.iter().enumerate() {
            let slot = n
                .properties
                .iter()
                .position(|p| p.name == *r)
                .unwrap_or(n.properties.len() + j);
            if slot < 64 {
                mask |= 1 << slot;
            }
        }
        assert_eq!(n.required_slots, mask, "{n:?}");
    }
}

/// The int64 range is checked on the literal only where an int64 node is read directly
/// (`NodeSeed`, `number_value`): an int64 node inside a union would be checked on the
/// parser's rounded reading alone.
#[test]
fn int64_nodes_are_read_directly() {
    let nodes = all_nodes();
    let mut int64 = 0;
    for n in &nodes {
        if n.int64 {
            int64 += 1;
            assert!(n.alternatives.is_empty(), "{n:?}");
        }
        for alt in n.alternatives {
            assert!(!alt.int64, "{alt:?}");
        }
    }
    assert!(int64 >= 2, "{int64}");
}
