"""State in DynamoDB (pynamodb), clips in S3 (boto3) and the run board in Redis (`runboard`).
Never imports Celery or tasks."""
