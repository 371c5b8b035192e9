"""State in DynamoDB (pynamodb) and clips in S3 (boto3). Never imports Celery or tasks."""
