//! A forward shows its original's files by reference: in the same
//! transaction as the forward, and without taking them from the original.

use std::sync::Arc;

use super::{Backend, group_of_the_app, message, pending, seq_event};
use crate::ids::{MessageId, Timestamp, UserId};
use crate::store::messaging::{Attachment, Author, Forwarded};

pub(in crate::store) async fn a_forward_refers_to_files_it_does_not_take(store: Arc<dyn Backend>) {
    let conversation = group_of_the_app(&*store).await;
    let file = pending(conversation.app_id, conversation.id, 10);
    assert!(store.create_file(&file, 1 << 20).await.unwrap());
    let mut forward = message(1, conversation.id, "fwd".to_owned());
    forward.body.attachments = vec![Attachment {
        file_id: file.id,
        name: file.name.clone(),
        content_type: file.content_type.clone(),
        size: 10,
        sha256: "0".repeat(64),
        displayed: true,
        preview: None,
    }];
    forward.body.forwarded = Some(Forwarded {
        conversation_id: conversation.id,
        message_id: MessageId::random(),
        author: Author::App,
        created_at: Timestamp(1).to_rfc3339(),
    });
    let posted = store
        .post(&forward, &[UserId::random()], seq_event(), Timestamp(3))
        .await
        .unwrap();
    assert_eq!(
        store.file_references(file.id).await.unwrap(),
        [(conversation.id, posted.message.id)]
    );
    assert_eq!(store.file(file.id).await.unwrap().unwrap().message_id, None);
}
